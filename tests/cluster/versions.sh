# shellcheck shell=bash
# Versions and locations shared by the cluster scripts (and the node scripts, which source
# this file). Sourcing it has no side effects beyond exporting variables.

export K8S_VERSION="${K8S_VERSION:-v1.34.4}"
export ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
export HELM_VERSION="${HELM_VERSION:-v3.22.0}"
export KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
# SeaweedFS (its S3 gateway stands in for S3 in the savepoint tests). The Go module has no
# tagged releases on the proxy, only pseudo-versions; this commit is SeaweedFS 4.53.
export SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"

# Caches survive `down`; runtime state does not.
export SLUICE_CACHE="${SLUICE_CACHE:-/var/cache/sluice}"
export SLUICE_STATE="${SLUICE_STATE:-/var/tmp/sluice-cluster}"
export SLUICE_BUILD_LOCK="${SLUICE_BUILD_LOCK:-/var/tmp/sluice-build.lock}"

k8s_minor="${K8S_VERSION#v1.}"
k8s_minor="${k8s_minor%%.*}"
export K8S_MINOR="${k8s_minor}"
unset k8s_minor

export K8S_BIN_DIR="${SLUICE_CACHE}/bin/k8s-${K8S_VERSION}"
export ETCD_BIN_DIR="${SLUICE_CACHE}/bin/etcd-${ETCD_VERSION}"
export HELM_BIN_DIR="${SLUICE_CACHE}/bin/helm-${HELM_VERSION}-k8s1.${K8S_MINOR}"
export KAFKA_HOME="${SLUICE_CACHE}/kafka/${KAFKA_VERSION}"
export SEAWEEDFS_BIN_DIR="${SLUICE_CACHE}/bin/seaweedfs-${SEAWEEDFS_VERSION##*-}"
export GOMODCACHE="${GOMODCACHE:-${SLUICE_CACHE}/go/mod}"
export GOCACHE="${GOCACHE:-${SLUICE_CACHE}/go/cache}"

# Network layout (fixed; the node scripts rely on it).
export SLUICE_BRIDGE="sluice0"
export SLUICE_BRIDGE_IP="10.244.0.1"
export SLUICE_POD_CIDR="10.244.0.0/24"
export SLUICE_SERVICE_CIDR="10.96.0.0/16"
export SLUICE_KUBERNETES_SERVICE_IP="10.96.0.1"
export SLUICE_CLUSTER_DOMAIN="cluster.local"

# The node's own cgroup (kubelet `cgroupRoot`): pods live in <hierarchy>/sluice-node/kubepods,
# never in a host-wide /kubepods, so `node.sh down` removes only this subtree.
export SLUICE_NODE_CGROUP_ROOT="${SLUICE_NODE_CGROUP_ROOT:-/sluice-node}"

export SLUICE_APISERVER_PORT=6443
export SLUICE_ETCD_CLIENT_PORT=2379
export SLUICE_ETCD_PEER_PORT=2380
export SLUICE_KAFKA_HOST_PORT=9092
export SLUICE_KAFKA_CONTROLLER_PORT=9093
export SLUICE_KAFKA_POD_PORT=9094
# SeaweedFS: the S3 gateway, and the master, volume server and filer behind it (each also
# serves gRPC on its port + 10000). All on 127.0.0.1.
export SLUICE_S3_PORT=8333
export SLUICE_SEAWEEDFS_MASTER_PORT=9333
export SLUICE_SEAWEEDFS_VOLUME_PORT=8380
export SLUICE_SEAWEEDFS_FILER_PORT=8888
# Static test credentials of the S3 gateway (written to ${SLUICE_STATE}/seaweedfs/s3.json by
# `cluster.sh up`) and the bucket it creates for savepoints. Not secrets: loopback only.
export SLUICE_S3_ACCESS_KEY_ID="${SLUICE_S3_ACCESS_KEY_ID:-sluice-e2e}"
export SLUICE_S3_SECRET_ACCESS_KEY="${SLUICE_S3_SECRET_ACCESS_KEY:-sluice-e2e-secret}"
export SLUICE_S3_BUCKET="${SLUICE_S3_BUCKET:-sluice-savepoints}"
export SLUICE_S3_REGION="${SLUICE_S3_REGION:-us-east-1}"
