"""The local environment: Bento servers per live version behind a Caddy gateway, and traffic."""
