"""The configuration files of the test node's components: containerd, CNI, kubelet, kube-proxy.

Every path they name lies under the node's state directory (or the tools cache); the few places the kubelet
and the CNI library write to regardless are listed in :data:`OUTSIDE_PATHS` so that ``down`` removes them.
"""

from __future__ import annotations

import json
from pathlib import Path

NODE_NAME = "mace-node"
NODE_NETNS = "mace-node"
REMOTE_NETNS = "mace-node-remote"
OUTER_DEVICE = "eth0"
NODE_ADDR = "172.31.250.2"
REMOTE_ADDR = "172.31.250.1"
UPLINK_PREFIX = 24
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/24"
API_PORT = 6443
CGROUP_ROOT = "/mace-node"
PAUSE_IMAGE = "localhost/mace-pause:dev"
REMOTE_UDP_PORT = 7007
REMOTE_TCP_PORT = 7008

OUTSIDE_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni",
                 "/run/containerd")
"""Written by the kubelet (device plugins, container log links), the CNI library (its result cache) and the
runc shim (its sockets) whatever their configuration says; removed on ``down`` if ``up`` created them."""

KUBELET_SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
                   "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes")
"""Machine-wide settings the kubelet sets at start; saved by ``up`` and restored by ``down``."""


def containerd_toml(state: Path, root: Path, socket: Path) -> str:
    """containerd with the CRI plugin: private directories, cgroupfs, the local pause image, CNI."""
    return f"""version = 2
root = "{root}"
state = "{state / 'containerd-state'}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # A negative oom_score_adj needs CAP_SYS_RESOURCE, which this machine's bounding set lacks.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{state / 'cni'}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "{state / 'runc'}"
"""


def cni_conflist(state: Path) -> str:
    """A bridge ``cni0`` in the node namespace, pods on POD_CIDR, routed (no masquerade) to the uplink."""
    config = {
        "cniVersion": "1.0.0", "name": "mace-node",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(state / "cni-ipam"),
                      "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def kubelet_yaml(state: Path, socket: Path, ca: Path) -> str:
    """The kubelet: cgroupfs under CGROUP_ROOT, webhook authn/authz, no swap check, eviction and image GC
    effectively off (the machine's disk is shared), its logs and files under ``state``."""
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: {CGROUP_ROOT}
containerRuntimeEndpoint: unix://{socket}
failSwapOn: false
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
resolvConf: {state / 'resolv.conf'}
podLogsDir: {state / 'pod-logs'}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
"""


def kube_proxy_yaml(kubeconfig: Path) -> str:
    """kube-proxy in iptables mode; conntrack figures 0: it leaves the machine's conntrack sysctls alone."""
    return f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
mode: iptables
clusterCIDR: {CLUSTER_CIDR}
hostnameOverride: {NODE_NAME}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"""
