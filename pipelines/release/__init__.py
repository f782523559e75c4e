"""Release: the desired state in git, the deploy rules, and the commits that apply them.

- :mod:`~pipelines.release.state`: the schema of ``deploy/<env>.yaml`` (``EnvState``).
- :mod:`~pipelines.release.transitions`: the rules as pure functions (state, request → plan).
- :mod:`~pipelines.release.apply`: loads, applies a plan, commits with evidence, moves aliases.
- :mod:`~pipelines.release.commit`: git as the control plane (messages, trailers, evidence).
- :mod:`~pipelines.release.champion`: rebuild the champion from git.
- :mod:`~pipelines.release.refusal`: record a refused candidate in git.
"""
