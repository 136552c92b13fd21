{{- define "sluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* "true" when cert-manager issues the webhook's certificate. */}}
{{- define "sluice.webhookCertManager" -}}
{{- $mode := toString .Values.webhook.certManager -}}
{{- if eq $mode "auto" -}}
{{- .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}
{{- else -}}
{{- eq $mode "true" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.webhookName" -}}
{{- include "sluice.fullname" . }}-webhook
{{- end -}}

{{/* The controller's rights over StreamJobs and their children, in a ClusterRole or in a
Role per watched namespace. */}}
{{- define "sluice.controllerRules" }}
  # The StreamJobs it reconciles (watched through a cache) and their status. It never
  # writes a spec: `kubectl scale`, HPAs and KEDA use the scale subresource with their
  # own rights. It patches metadata.finalizers alone: the final savepoint of
  # spec.savepoints.onDelete holds a deletion until it is taken.
  - apiGroups: ["sluice.dev"]
    resources: ["streamjobs"]
    verbs: ["list", "watch", "patch"]
  - apiGroups: ["sluice.dev"]
    resources: ["streamjobs/status"]
    verbs: ["patch"]
  # What it builds for each StreamJob: server-side apply (patch, create for a new
  # object) and metadata-only watches that put back a child edited or deleted by hand.
  # Deletion is left to garbage collection (owner references), except the workers'
  # ServiceAccount when podTemplate names another one.
  - apiGroups: ["apps"]
    resources: ["statefulsets"]
    verbs: ["list", "watch", "create", "patch"]
  - apiGroups: [""]
    resources: ["services"]
    verbs: ["list", "watch", "create", "patch"]
  # The job's manifest the workers run; read back (get) to classify a change.
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get", "list", "watch", "create", "patch"]
  # The workers' pod IPs, to call their admin API for savepoints, and the workers
  # stopped at a savepoint, replaced all at once by the new spec (docs/lifecycle.md).
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "delete"]
  - apiGroups: [""]
    resources: ["serviceaccounts"]
    verbs: ["list", "watch", "create", "patch", "delete"]
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["list", "watch", "create", "patch"]
  # The Secret a StreamJob names in spec.kafka.secretRef (only its metadata, to check it
  # exists), and the workers' admin-token Secrets it owns, which it watches (selected by
  # its managed-by label) to keep each token stable without a read per reconcile. RBAC
  # cannot limit a list to a label: this rule lets it read every Secret where it runs;
  # watchNamespaces bounds that (docs/operations.md#rights).
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "create", "patch"]
  # An Event for each transition and failure of a StreamJob.
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end -}}
