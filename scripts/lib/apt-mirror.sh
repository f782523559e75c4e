# shellcheck shell=bash
# Sourced by scripts/fresh-machine.sh and scripts/make-base-image.sh: one lookup of the apt
# mirror this machine already uses, so that debootstrap fetches from the same place as apt-get.

# apt_mirror SUITE: print the first mirror of the configured apt sources that serves SUITE
# (deb822 *.sources files first, then one-line *.list files); prints nothing if none does.
apt_mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v suite="$1" '
      function flush() {
        if (uri != "" && enabled && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " "))
          { print uri; found = 1; exit }
        uri = ""; suites = ""; types = ""; enabled = 1
      }
      BEGIN { enabled = 1 }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { $1 = ""; suites = $0 }
      /^Types:/ { $1 = ""; types = $0 }
      /^Enabled:[[:space:]]*no/ { enabled = 0 }
      END { if (!found) flush() }
    ' "$file"
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    sed -E 's/\[[^]]*\]//' "$file" | awk -v suite="$1" '$1 == "deb" && $3 == suite { print $2 }'
  done
}
