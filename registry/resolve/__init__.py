"""The resolver: compose a transplant plan for a target from what the registry knows.

`planner.make_plan` ranks routes (`routes`), picks α (`alpha`) and composes chains of maps
(`compose`) over facts read by `view`; `execute` carries a plan out.
"""
