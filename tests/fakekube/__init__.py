"""A local fake Kubernetes API server for tests (standard library only).

It speaks the real HTTP protocol of the Kubernetes API for ``ray.io/v1`` custom
objects and the core objects the client needs, so the real ``kubernetes`` Python
client talks to it over loopback through a generated kubeconfig. See
:class:`tests.fakekube.server.FakeKube` and :class:`tests.fakekube.operator.FakeOperator`.
"""

from tests.fakekube.operator import FakeOperator
from tests.fakekube.server import Deny, FakeKube, service_account_token, write_kubeconfig

__all__ = ["Deny", "FakeKube", "FakeOperator", "service_account_token", "write_kubeconfig"]
