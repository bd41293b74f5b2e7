"""The connection every resource object is handed: API client, namespace and identity.

:class:`KubeApi` loads either a kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``,
optionally a named context) or the in-cluster ServiceAccount, and works out the
namespace (explicit setting, then the kubeconfig context's namespace or the pod's
namespace file, then ``default``) and who the client is (so an RBAC denial can
say which ServiceAccount or user was refused).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from workloads.exceptions import ClusterConfigError

logger = logging.getLogger(__name__)

#: Where a pod finds its ServiceAccount credentials.
SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

#: Seconds each API request may take before it fails (never hang the CLI).
DEFAULT_REQUEST_TIMEOUT = 30.0


def _jwt_subject(token: str | None) -> str | None:
    """The ``sub`` claim of a JWT (ServiceAccount tokens are JWTs), without verifying it.

    Only used to *name* the identity in error messages; the API server does the verifying.
    """
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except ValueError:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def describe_subject(subject: str) -> str:
    """``system:serviceaccount:ns:sa`` -> ``ServiceAccount "ns/sa"``; anything else -> ``user "x"``."""
    parts = subject.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return f'ServiceAccount "{parts[2]}/{parts[3]}"'
    return f'user "{subject}"'


class KubeApi:
    """An authenticated Kubernetes API connection with a default namespace.

    Args:
        api_client: A configured ``kubernetes.client.ApiClient``.
        namespace: Namespace used when a call does not name one.
        identity: Human-readable "who am I" for error messages.
        request_timeout: Seconds per HTTP request.
    """

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        namespace: str,
        identity: str,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        namespace_source: str = "argument",
    ):
        self.api_client = api_client
        self.namespace = namespace
        #: Where :attr:`namespace` came from: ``argument``, ``context``, ``in-cluster`` or ``default``.
        self.namespace_source = namespace_source
        self.identity = identity
        self.request_timeout = request_timeout
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.core = k8s_client.CoreV1Api(api_client)

    @property
    def host(self) -> str:
        """The API server URL."""
        return str(self.api_client.configuration.host)

    def close(self) -> None:
        """Release the connection pool."""
        self.api_client.close()

    def __enter__(self) -> "KubeApi":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        context: str | None = None,
        namespace: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> "KubeApi":
        """Connect with a kubeconfig file.

        Args:
            path: The kubeconfig; ``None`` means ``$KUBECONFIG`` or ``~/.kube/config``.
            context: Context name; ``None`` means the file's current context.
            namespace: Overrides the context's namespace.
            request_timeout: Seconds per HTTP request.

        Raises:
            ClusterConfigError: The file is missing or unusable, or the context is unknown.
        """
        # Read $KUBECONFIG now: the kubernetes package captures it once, at import.
        config_file = os.fspath(path) if path is not None else (
            os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config"))
        configuration = k8s_client.Configuration()
        try:
            contexts, active = k8s_config.list_kube_config_contexts(config_file)
            chosen = active
            if context is not None:
                chosen = next((c for c in contexts if c.get("name") == context), None)
                if chosen is None:
                    names = sorted(str(c.get("name")) for c in contexts)
                    raise ClusterConfigError(f'Got "{context}" for cluster.context: must be one of {names}')
            k8s_config.load_kube_config(
                config_file=config_file,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        except ConfigException as e:
            where = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ClusterConfigError(f"cannot load kubeconfig {where}: {e}") from e
        ctx = (chosen or {}).get("context") or {}
        ns = namespace or ctx.get("namespace") or "default"
        source = "argument" if namespace else "context" if ctx.get("namespace") else "default"
        keys = configuration.api_key or {}
        token = str(keys.get("BearerToken") or keys.get("authorization") or "")
        subject = _jwt_subject(token.removeprefix("Bearer ").strip())
        who = describe_subject(subject) if subject else f'user "{ctx.get("user", "?")}"'
        identity = f'{who} (kubeconfig context "{(chosen or {}).get("name", "?")}")'
        logger.info("kubeconfig context %s, namespace %s", (chosen or {}).get("name"), ns)
        return cls(k8s_client.ApiClient(configuration), ns, identity, request_timeout, source)

    @classmethod
    def from_incluster(
        cls,
        *,
        namespace: str | None = None,
        serviceaccount_dir: str | os.PathLike[str] = SERVICEACCOUNT_DIR,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> "KubeApi":
        """Connect with the pod's ServiceAccount (``KUBERNETES_SERVICE_HOST`` and the mounted token).

        Args:
            namespace: Overrides the pod's namespace.
            serviceaccount_dir: Where the token, ``ca.crt`` and ``namespace`` files are.
            request_timeout: Seconds per HTTP request.

        Raises:
            ClusterConfigError: Not in a pod, or the ServiceAccount files are missing.
        """
        from kubernetes.config.incluster_config import InClusterConfigLoader

        sa_dir = Path(serviceaccount_dir)
        configuration = k8s_client.Configuration()
        try:
            InClusterConfigLoader(
                token_filename=str(sa_dir / "token"), cert_filename=str(sa_dir / "ca.crt")
            ).load_and_set(configuration)
        except ConfigException as e:
            raise ClusterConfigError(f"no usable in-cluster configuration: {e}") from e
        ns, source = namespace, "argument"
        if ns is None:
            try:
                ns, source = (sa_dir / "namespace").read_text(encoding="utf-8").strip(), "in-cluster"
            except OSError:
                ns = ""
            if not ns:
                ns, source = "default", "default"
        try:
            subject = _jwt_subject((sa_dir / "token").read_text(encoding="utf-8").strip())
        except OSError:
            subject = None
        identity = describe_subject(subject) if subject else "the pod's ServiceAccount"
        return cls(k8s_client.ApiClient(configuration), ns, f"{identity} (in-cluster)", request_timeout, source)

    @classmethod
    def from_settings(
        cls,
        *,
        context: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> "KubeApi":
        """Pick kubeconfig or in-cluster configuration, the way ``kubectl`` does.

        A kubeconfig (explicit path, ``$KUBECONFIG`` or ``~/.kube/config``) wins; inside
        a pod without one, the ServiceAccount is used.

        Raises:
            ClusterConfigError: Neither is available.
        """
        env_paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        have_kubeconfig = (
            kubeconfig is not None
            or any(Path(p).expanduser().exists() for p in env_paths)
            or Path("~/.kube/config").expanduser().exists()
        )
        if have_kubeconfig:
            return cls.from_kubeconfig(kubeconfig, context=context, namespace=namespace, request_timeout=request_timeout)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.from_incluster(namespace=namespace, request_timeout=request_timeout)
        raise ClusterConfigError(
            "no Kubernetes configuration: set KUBECONFIG (or create ~/.kube/config), "
            "or run inside a pod with a ServiceAccount"
        )
