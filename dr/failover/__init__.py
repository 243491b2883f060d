"""Recovery plans at failover time: the steps, the recovery point, the runner, and what it acts on.

    steps.py     the exact steps of a failover, commit, change of point, cleanup or failback (pure)
    points.py    recovery point choice: latest, latest-processed, latest-app, latest-multi-vm, a time
    actions.py   scripts, runbooks (with the plan context as JSON) and their timeouts
    provider.py  the interfaces the runner acts on (catalog, export, Azure storage, source, replication)
    datapath.py  the data path (dr_agent) behind them: catalog collection and export
    source.py    shutting vSphere source machines down through vCenter
    runner.py    executes a job's stored steps: durable, resumable, groups in order, machines in parallel

Jobs and their logs live in the configuration server's store (`dr.server.jobs`).
"""
