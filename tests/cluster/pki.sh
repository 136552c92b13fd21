# shellcheck shell=bash
# The local cluster's certificates, made with openssl: one CA signs every serving and client
# certificate. Sourced by cluster.sh; the node scripts may source it too and call
# `pki_client_cert NAME CN ORG` to get a client certificate (e.g. a kubelet's
# system:node:<name> / system:nodes) signed by the same CA.
#
# Files (all under ${SLUICE_STATE}/pki):
#   ca.crt ca.key                          cluster CA (also the client CA of the API server)
#   apiserver.crt/.key                     API server serving cert (SANs below)
#   admin.crt/.key                         CN=sluice-admin, O=system:masters
#   kube-controller-manager.crt/.key       CN=system:kube-controller-manager
#   kube-scheduler.crt/.key                CN=system:kube-scheduler
#   apiserver-kubelet-client.crt/.key      CN=kube-apiserver-kubelet-client, O=system:masters
#   etcd-server.crt/.key, apiserver-etcd-client.crt/.key
#   sa.key sa.pub                          service-account token signing key pair

PKI_DIR="${SLUICE_STATE}/pki"

pki_ca() {
  [[ -s "${PKI_DIR}/ca.crt" && -s "${PKI_DIR}/ca.key" ]] && return 0
  mkdir -p "${PKI_DIR}"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout "${PKI_DIR}/ca.key" -out "${PKI_DIR}/ca.crt" -subj "/CN=sluice-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

# pki_sign NAME SUBJECT EXTENSIONS: key + certificate signed by the CA, unless present.
pki_sign() {
  local name="$1" subject="$2" extensions="$3"
  [[ -s "${PKI_DIR}/${name}.crt" && -s "${PKI_DIR}/${name}.key" ]] && return 0
  local ext_file="${PKI_DIR}/${name}.ext"
  printf '%s\n' "${extensions}" >"${ext_file}"
  openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "${PKI_DIR}/${name}.key" \
    -out "${PKI_DIR}/${name}.csr" -subj "${subject}" 2>/dev/null
  openssl x509 -req -sha256 -days 3650 -in "${PKI_DIR}/${name}.csr" \
    -CA "${PKI_DIR}/ca.crt" -CAkey "${PKI_DIR}/ca.key" -CAcreateserial \
    -extfile "${ext_file}" -out "${PKI_DIR}/${name}.crt" 2>/dev/null
  rm -f "${PKI_DIR}/${name}.csr" "${ext_file}"
  chmod 600 "${PKI_DIR}/${name}.key"
}

pki_client_cert() {
  local name="$1" cn="$2" org="${3:-}" subject
  subject="/CN=${cn}"
  [[ -z "${org}" ]] || subject="/O=${org}/CN=${cn}"
  pki_sign "${name}" "${subject}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
}

pki_server_cert() {
  local name="$1" cn="$2" sans="$3"
  pki_sign "${name}" "/CN=${cn}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=${sans}"
}

ensure_pki() {
  pki_ca
  local domain="${SLUICE_CLUSTER_DOMAIN}"
  pki_server_cert apiserver kube-apiserver "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.${domain},IP:127.0.0.1,\
IP:${SLUICE_BRIDGE_IP},IP:${SLUICE_KUBERNETES_SERVICE_IP}"
  pki_server_cert etcd-server etcd "DNS:localhost,IP:127.0.0.1"
  pki_client_cert apiserver-etcd-client kube-apiserver-etcd-client
  pki_client_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  pki_client_cert admin sluice-admin system:masters
  pki_client_cert kube-controller-manager system:kube-controller-manager
  pki_client_cert kube-scheduler system:kube-scheduler
  if [[ ! -s "${PKI_DIR}/sa.key" ]]; then
    openssl genrsa -out "${PKI_DIR}/sa.key" 2048 2>/dev/null
    openssl rsa -in "${PKI_DIR}/sa.key" -pubout -out "${PKI_DIR}/sa.pub" 2>/dev/null
    chmod 600 "${PKI_DIR}/sa.key"
  fi
}

# write_kubeconfig PATH SERVER CERT_NAME USER: a kubeconfig with embedded credentials.
write_kubeconfig() {
  local path="$1" server="$2" cert="$3" user="$4"
  mkdir -p "$(dirname "${path}")"
  cat >"${path}.tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: sluice
  cluster:
    server: ${server}
    certificate-authority-data: $(base64 -w0 <"${PKI_DIR}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 <"${PKI_DIR}/${cert}.crt")
    client-key-data: $(base64 -w0 <"${PKI_DIR}/${cert}.key")
contexts:
- name: sluice
  context:
    cluster: sluice
    user: ${user}
current-context: sluice
KUBECONFIG
  chmod 600 "${path}.tmp"
  mv "${path}.tmp" "${path}"
}
