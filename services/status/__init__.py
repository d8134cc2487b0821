"""`liqo-gateway status`, the operator's view of the gateways (like `subctl show` / `subctl diagnose`).

- `gather`   the reads: Kubernetes objects and the netagent's GetInfo/ListTunnels -> `Snapshot` (thin)
- `report`   the tables of one cluster from a Snapshot (pure)
- `diagnose` the findings, each with its fix (pure), tested as tables in tests/unit/test_status_*.py
- `render`   text tables or one JSON document (pure)
- `main`     flags, exit status; the console script `liqo-gateway status`
"""
