"""Declarative disaster recovery to Azure, as code.

The spec models double as a Python DSL::

    from dr import Estate, Azure, Network, Quota, Site, Machine, Disk, ProtectionGroup, Policy
"""

from dr_agent import __version__  # one version source for both packages

from dr.model import (
    Action,
    Azure,
    Disk,
    EnvRef,
    Estate,
    EsxiHost,
    FileRef,
    Machine,
    Network,
    Notifications,
    PlanGroup,
    Planning,
    Policy,
    ProcessServer,
    ProtectionGroup,
    Quota,
    RecoveryPlan,
    Site,
    TrafficManager,
    VCenter,
)

__all__ = [
    "Action",
    "Azure",
    "Disk",
    "EnvRef",
    "Estate",
    "EsxiHost",
    "FileRef",
    "Machine",
    "Network",
    "Notifications",
    "PlanGroup",
    "Planning",
    "Policy",
    "ProcessServer",
    "ProtectionGroup",
    "Quota",
    "RecoveryPlan",
    "Site",
    "TrafficManager",
    "VCenter",
    "__version__",
]
