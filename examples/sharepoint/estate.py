"""The SharePoint farm of dr.yaml, composed in Python (`dr validate examples/sharepoint/estate.py`).

The same models the YAML loads into; a script or a Pulumi program can build estates this way.
"""

from dr import (
    Action,
    Azure,
    Disk,
    EnvRef,
    Estate,
    Machine,
    Network,
    Notifications,
    PlanGroup,
    Policy,
    ProcessServer,
    ProtectionGroup,
    Quota,
    RecoveryPlan,
    Site,
    TrafficManager,
    VCenter,
)


def windows_vm(name: str, vcpus: int, memory_gb: int, *disks: Disk) -> Machine:
    return Machine(name=name, site="hq", kind="vmware", os="Windows Server 2012 R2", vcpus=vcpus,
                   memory_gb=memory_gb, nics=1, disks=list(disks))


machines = [
    windows_vm("dc01", 2, 4, Disk(name="c", size_gb=80, iops=60, churn_gb_per_day=2)),
    windows_vm("sql01", 8, 32,
               Disk(name="c", size_gb=100, iops=100, churn_gb_per_day=4),
               Disk(name="data", size_gb=500, iops=1500, churn_gb_per_day=60),
               Disk(name="log", size_gb=200, iops=800, churn_gb_per_day=40)),
    windows_vm("app01", 4, 16, Disk(name="c", size_gb=100, iops=120, churn_gb_per_day=5)),
    *(windows_vm(f"web0{i}", 2, 8, Disk(name="c", size_gb=80, iops=80, churn_gb_per_day=3)) for i in (1, 2)),
]

estate = Estate(
    estate="contoso-sharepoint",
    support_profile="azure-2026",
    azure=Azure(
        subscription=EnvRef(env="AZURE_SUBSCRIPTION_ID"),
        region="westeurope",
        resource_group="contoso-dr",
        connectivity="vpn",
        network=Network(vnet="contoso-dr-vnet", address_space="10.50.0.0/16", subnet="recovery",
                        subnet_prefix="10.50.1.0/24"),
        storage_redundancy="GRS",
        quota=Quota(vcpus=20),
    ),
    sites=[Site(
        name="hq",
        vcenter=VCenter(host="vcenter.contoso.local", version="7.0", user="dr-discovery@vsphere.local",
                        password=EnvRef(env="VCENTER_PASSWORD")),
        process_servers=[ProcessServer(name="ps01", address="10.0.0.20", os="Windows Server 2012 R2")],
        bandwidth_mbps=200,
    )],
    machines=machines,
    protection_groups=[ProtectionGroup(
        name="sharepoint",
        members=[m.name for m in machines],
        policy=Policy(multi_vm_consistency=True, rpo_threshold="15m", crash_consistent_every="1m",
                      retention="24h", app_consistent_every="1h"),
    )],
    recovery_plans=[RecoveryPlan(
        name="sharepoint",
        groups=[
            PlanGroup(name="directory", machines=["dc01"]),
            PlanGroup(name="database", machines=["sql01"]),
            PlanGroup(name="application", machines=["app01"]),
            PlanGroup(name="web", machines=["web01", "web02"], after=[
                Action(manual="Check that the SharePoint home page answers on its Azure address"),
                Action(runbook="open-traffic-manager-endpoint"),
            ]),
        ],
        traffic_manager=TrafficManager(profile="contoso-sharepoint", on_premises_endpoint="sharepoint.contoso.com"),
    )],
    notifications=Notifications(email=["dr-team@contoso.com"]),
)
