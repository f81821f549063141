"""A development STS (moto or a fast stub behind a fault-injecting proxy) for tests and demos."""

from __future__ import annotations

from credfresh.devsts.control import CONTROL_PREFIX
from credfresh.devsts.faults import FaultRule
from credfresh.devsts.proxy import Proxy
from credfresh.devsts.records import Counts, IssuedCredentials, RequestRecord
from credfresh.devsts.remote import ControlError, RemoteDevSTS
from credfresh.devsts.service import DevSTS
from credfresh.devsts.stserrors import STS_ERRORS
from credfresh.devsts.walkthrough import Walkthrough

__all__ = [
    "CONTROL_PREFIX",
    "STS_ERRORS",
    "ControlError",
    "Counts",
    "DevSTS",
    "FaultRule",
    "IssuedCredentials",
    "Proxy",
    "RemoteDevSTS",
    "RequestRecord",
    "Walkthrough",
]
