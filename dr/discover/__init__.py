"""Discovery and profiling: what an estate really is, read from vCenter/ESXi and from servers over SSH.

    vcenter.py    one PropertyCollector round over a container view: datacenters, clusters, hosts, VMs
    physical.py   Linux facts over SSH with read-only commands (the agent's fact model, shared)
    inventory.py  the inventory YAML a spec includes: written, rediscovered in place, changes reported
    profile.py    PerformanceManager sampling: per-disk write IOPS and churn percentiles
    errors.py     what goes wrong talking to a source, one line each (exit 2)
"""
