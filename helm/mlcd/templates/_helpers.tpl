{{/* Names, labels and references shared by every template of the mlcd chart. */}}

{{- define "mlcd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlcd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one microservice's objects: "<fullname>-<service>". Call with (dict "root" $ "service" "ingest"). */}}
{{- define "mlcd.serviceName" -}}
{{- printf "%s-%s" (include "mlcd.fullname" .root) .service | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlcd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mlcd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlcd
{{- end }}

{{- define "mlcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlcd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end }}

{{/* Labels of one microservice's objects. Call with (dict "root" $ "service" "ingest"). */}}
{{- define "mlcd.serviceLabels" -}}
{{ include "mlcd.labels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end }}

{{- define "mlcd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "mlcd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlcd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mlcd.secretName" -}}
{{- default (include "mlcd.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "mlcd.apiTokensSecretName" -}}
{{- default (printf "%s-api-tokens" (include "mlcd.fullname" .)) .Values.apiTokens.existingSecret }}
{{- end }}

{{- define "mlcd.policiesConfigMapName" -}}
{{- default (printf "%s-policies" (include "mlcd.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{- define "mlcd.kserveNamespace" -}}
{{- default .Release.Namespace .Values.config.kserveNamespace }}
{{- end }}

{{/* The HTTP port a service listens on: the ingest's API port, or the small probe port of a consumer. */}}
{{- define "mlcd.port" -}}
{{- if eq .service "ingest" }}{{ .root.Values.httpPort }}{{ else }}{{ .root.Values.probePort }}{{ end }}
{{- end }}

{{/* Settings as environment variables: the non-secret MLCD_* values (ConfigMap data). */}}
{{- define "mlcd.configData" -}}
{{- $c := .Values.config -}}
{{- include "mlcd.checkConfig" . -}}
MLCD_KAFKA_BOOTSTRAP: {{ required "config.kafka.bootstrap is required" $c.kafka.bootstrap | quote }}
MLCD_KAFKA_ENABLE_IDEMPOTENCE: {{ $c.kafka.enableIdempotence | quote }}
MLCD_KAFKA_NAMESPACE: {{ $c.kafka.namespace | quote }}
MLCD_KAFKA_PARTITIONS: {{ $c.kafka.partitions | quote }}
MLCD_KAFKA_REPLICATION_FACTOR: {{ $c.kafka.replicationFactor | quote }}
MLCD_KAFKA_REQUEST_TIMEOUT_S: {{ $c.kafka.requestTimeoutSeconds | quote }}
MLCD_KAFKA_SESSION_TIMEOUT_S: {{ $c.kafka.sessionTimeoutSeconds | quote }}
MLCD_KAFKA_HEARTBEAT_INTERVAL_S: {{ $c.kafka.heartbeatIntervalSeconds | quote }}
MLCD_KAFKA_MAX_REQUEST_SIZE: {{ $c.kafka.maxRequestSize | int64 | quote }}
MLCD_KAFKA_FETCH_MAX_WAIT_MS: {{ $c.kafka.fetchMaxWaitMs | int64 | quote }}
{{- $sec := $c.kafka.security }}
MLCD_KAFKA_SECURITY_PROTOCOL: {{ $sec.protocol | quote }}
{{- with $sec.saslMechanism }}
MLCD_KAFKA_SASL_MECHANISM: {{ . | quote }}
{{- end }}
MLCD_KAFKA_SSL_CHECK_HOSTNAME: {{ $sec.checkHostname | quote }}
{{- if $sec.tls.secretName }}
{{- with $sec.tls.caKey }}
MLCD_KAFKA_SSL_CA_FILE: {{ printf "/etc/mlcd/kafka-tls/%s" . | quote }}
{{- end }}
{{- with $sec.tls.certKey }}
MLCD_KAFKA_SSL_CERT_FILE: {{ printf "/etc/mlcd/kafka-tls/%s" . | quote }}
{{- end }}
{{- with $sec.tls.keyKey }}
MLCD_KAFKA_SSL_KEY_FILE: {{ printf "/etc/mlcd/kafka-tls/%s" . | quote }}
{{- end }}
{{- end }}
MLCD_MLFLOW_TRACKING_URI: {{ required "config.mlflowTrackingUri is required" $c.mlflowTrackingUri | quote }}
MLCD_MLFLOW_TIMEOUT_S: {{ $c.mlflowTimeoutSeconds | quote }}
MLCD_KFP_HOST: {{ required "config.kfpHost is required" $c.kfpHost | quote }}
MLCD_KFP_TIMEOUT_S: {{ $c.kfpTimeoutSeconds | quote }}
{{- with $c.kfpNamespace }}
MLCD_KFP_NAMESPACE: {{ . | quote }}
{{- end }}
{{- with $c.kfpExperiment }}
MLCD_KFP_EXPERIMENT: {{ . | quote }}
{{- end }}
{{- if $c.kfpServiceAccountToken }}
MLCD_KFP_TOKEN_PATH: "/var/run/secrets/kubeflow/pipelines/token"
{{- end }}
MLCD_PIPELINES_DIR: {{ $c.pipelinesDir | quote }}
MLCD_BUILD_TIMEOUT_S: {{ $c.buildTimeoutSeconds | quote }}
MLCD_VALIDATION_TIMEOUT_S: {{ $c.validationTimeoutSeconds | quote }}
MLCD_INGEST_TIMEOUT_S: {{ $c.ingestTimeoutSeconds | quote }}
{{- with $c.s3.endpoint }}
MLCD_S3_ENDPOINT: {{ . | quote }}
{{- end }}
{{- if not (contains "://" $c.s3.endpoint) }}
MLCD_S3_SECURE: {{ $c.s3.secure | quote }}
{{- end }}
MLCD_S3_TIMEOUT_S: {{ $c.s3.timeoutSeconds | quote }}
MLCD_KSERVE_NAMESPACE: {{ include "mlcd.kserveNamespace" . | quote }}
{{- with $c.prometheusUrl }}
MLCD_PROMETHEUS_URL: {{ . | quote }}
{{- end }}
{{- with $c.seldonNamespace }}
MLCD_SELDON_NAMESPACE: {{ . | quote }}
{{- end }}
{{- with $c.seldonInferenceUrl }}
MLCD_SELDON_INFERENCE_URL: {{ . | quote }}
{{- end }}
{{- with $c.katibNamespace }}
MLCD_KATIB_NAMESPACE: {{ . | quote }}
{{- end }}
MLCD_FEAST_BIN: {{ $c.feast.bin | quote }}
MLCD_FEAST_TIMEOUT_S: {{ $c.feast.timeoutSeconds | quote }}
{{- with $c.trainingNamespace }}
MLCD_TRAINING_NAMESPACE: {{ . | quote }}
{{- end }}
MLCD_TRIAL_IMAGE: {{ include "mlcd.image" . | quote }}
MLCD_KUBE_TIMEOUT_S: {{ $c.kubeTimeoutSeconds | quote }}
{{- with $c.gitlabUrl }}
MLCD_GITLAB_URL: {{ . | quote }}
{{- end }}
MLCD_GITLAB_TIMEOUT_S: {{ $c.gitlabTimeoutSeconds | quote }}
{{- with $c.minioKafkaTopic }}
MLCD_MINIO_KAFKA_TOPIC: {{ . | quote }}
{{- end }}
MLCD_EVENT_RETENTION_DAYS: {{ $c.eventRetentionDays | quote }}
{{- with $c.lineage.openlineageUrl }}
MLCD_OPENLINEAGE_URL: {{ . | quote }}
MLCD_OPENLINEAGE_NAMESPACE: {{ $c.lineage.openlineageNamespace | quote }}
MLCD_OPENLINEAGE_TIMEOUT_S: {{ $c.lineage.openlineageTimeoutSeconds | quote }}
{{- end }}
{{- with $c.lineage.mlmdStore }}
MLCD_MLMD_STORE: {{ . | quote }}
MLCD_MLMD_PYTHON: {{ $c.lineage.mlmdPython | quote }}
MLCD_MLMD_TIMEOUT_S: {{ $c.lineage.mlmdTimeoutSeconds | quote }}
{{- end }}
MLCD_HANDLER_MAX_ATTEMPTS: {{ $c.handler.maxAttempts | quote }}
MLCD_HANDLER_BACKOFF_INITIAL_S: {{ $c.handler.backoffInitialSeconds | quote }}
MLCD_HANDLER_BACKOFF_MAX_S: {{ $c.handler.backoffMaxSeconds | quote }}
MLCD_WEBHOOK_MAX_BODY_BYTES: {{ $c.webhook.maxBodyBytes | int64 | quote }}
MLCD_WEBHOOK_MAX_AGE_S: {{ $c.webhook.maxAgeSeconds | quote }}
MLCD_ADAPTER_CHECK_INTERVAL_S: {{ $c.adapterCheckIntervalSeconds | quote }}
MLCD_LOG_LEVEL: {{ $c.logLevel | quote }}
MLCD_HTTP_HOST: "0.0.0.0"
MLCD_HOME: "/var/lib/mlcd"
MLCD_POLICIES_DIR: "/etc/mlcd/policies"
{{- end }}

{{/* Settings that only work together, refused at render time with the reason (mlcd would refuse them at
start, in every pod). */}}
{{- define "mlcd.checkConfig" -}}
{{- $c := .Values.config -}}
{{- if ge (float64 $c.kafka.heartbeatIntervalSeconds) (float64 $c.kafka.sessionTimeoutSeconds) }}
{{- fail (printf "config.kafka.heartbeatIntervalSeconds (%v) must be below config.kafka.sessionTimeoutSeconds (%v), about a third of it" $c.kafka.heartbeatIntervalSeconds $c.kafka.sessionTimeoutSeconds) }}
{{- end }}
{{- if gt (add (int64 $c.webhook.maxBodyBytes) 65536) (int64 $c.kafka.maxRequestSize) }}
{{- fail (printf "config.webhook.maxBodyBytes (%v) must be at least 65536 below config.kafka.maxRequestSize (%v): a delivery parked on the DLQ carries its body plus headers" (int64 $c.webhook.maxBodyBytes) (int64 $c.kafka.maxRequestSize)) }}
{{- end }}
{{- if gt (float64 $c.handler.backoffInitialSeconds) (float64 $c.handler.backoffMaxSeconds) }}
{{- fail (printf "config.handler.backoffInitialSeconds (%v) is above config.handler.backoffMaxSeconds (%v)" $c.handler.backoffInitialSeconds $c.handler.backoffMaxSeconds) }}
{{- end }}
{{- $lineage := get .Values.services "lineage-export" | default dict }}
{{- if and $lineage.enabled (not (or $c.lineage.openlineageUrl $c.lineage.mlmdStore)) }}
{{- fail "services.lineage-export is enabled but has nowhere to write: set config.lineage.openlineageUrl or config.lineage.mlmdStore" }}
{{- end }}
{{- $sec := $c.kafka.security }}
{{- $tls := or (eq $sec.protocol "SSL") (eq $sec.protocol "SASL_SSL") }}
{{- if and (hasPrefix "SASL_" $sec.protocol) (not $sec.saslMechanism) }}
{{- fail (printf "config.kafka.security.protocol %s needs config.kafka.security.saslMechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $sec.protocol) }}
{{- end }}
{{- if and (hasPrefix "SASL_" $sec.protocol) (not .Values.secrets.existingSecret) (not (and .Values.secrets.kafkaSaslUsername .Values.secrets.kafkaSaslPassword)) }}
{{- fail (printf "config.kafka.security.protocol %s needs secrets.kafkaSaslUsername and secrets.kafkaSaslPassword (or secrets.existingSecret with MLCD_KAFKA_SASL_USERNAME/PASSWORD)" $sec.protocol) }}
{{- end }}
{{- if and $sec.saslMechanism (not (hasPrefix "SASL_" $sec.protocol)) }}
{{- fail (printf "config.kafka.security.saslMechanism is set but config.kafka.security.protocol is %s; use SASL_SSL" $sec.protocol) }}
{{- end }}
{{- if and $sec.tls.secretName (not $tls) }}
{{- fail (printf "config.kafka.security.tls.secretName is set but config.kafka.security.protocol is %s; use SSL or SASL_SSL" $sec.protocol) }}
{{- end }}
{{- if ne (empty $sec.tls.certKey) (empty $sec.tls.keyKey) }}
{{- fail "config.kafka.security.tls.certKey and tls.keyKey go together (a client certificate and its key)" }}
{{- end }}
{{- if and (or $sec.tls.certKey $sec.tls.keyKey) (not $sec.tls.secretName) }}
{{- fail "config.kafka.security.tls.certKey/keyKey name keys of config.kafka.security.tls.secretName, which is empty" }}
{{- end }}
{{- if and $c.kfpNamespace (not $c.kfpExperiment) }}
{{- fail "config.kfpNamespace is set (multi-user Kubeflow) but config.kfpExperiment is empty: runs in a profile namespace need an experiment there" }}
{{- end }}
{{- if and $c.kfpServiceAccountToken (not .Values.serviceAccount.automountToken) }}
{{- fail "config.kfpServiceAccountToken needs serviceAccount.automountToken (the projected token comes from the pod's ServiceAccount)" }}
{{- end }}
{{- if and (contains "://" $c.s3.endpoint) $c.s3.secure (hasPrefix "http://" $c.s3.endpoint) }}
{{- fail (printf "config.s3.secure is true but config.s3.endpoint %q says http://; use https:// (the scheme sets TLS)" $c.s3.endpoint) }}
{{- end }}
{{- end }}

{{/* Secret settings (Secret stringData); only the keys that have a value. */}}
{{- define "mlcd.secretData" -}}
{{- $s := .Values.secrets -}}
MLCD_DATABASE_URL: {{ required "secrets.databaseUrl (or secrets.existingSecret) is required" $s.databaseUrl | quote }}
{{- range $key, $value := dict "MLCD_KAFKA_SASL_USERNAME" $s.kafkaSaslUsername "MLCD_KAFKA_SASL_PASSWORD" $s.kafkaSaslPassword "MLCD_KAFKA_SSL_KEY_PASSWORD" $s.kafkaSslKeyPassword "MLCD_S3_ACCESS_KEY" $s.s3AccessKey "MLCD_S3_SECRET_KEY" $s.s3SecretKey "MLCD_GITLAB_TOKEN" $s.gitlabToken "MLCD_GITLAB_WEBHOOK_SECRET" $s.gitlabWebhookSecret "MLCD_GITLAB_SIGNING_TOKEN" $s.gitlabSigningToken "MLCD_MINIO_WEBHOOK_TOKEN" $s.minioWebhookToken "MLCD_ALERTMANAGER_TOKEN" $s.alertmanagerToken "MLCD_MLFLOW_WEBHOOK_SECRET" $s.mlflowWebhookSecret "MLCD_SLACK_WEBHOOK_URL" $s.slackWebhookUrl "MLCD_OPENLINEAGE_API_KEY" $s.openlineageApiKey "MLCD_MLMD_PASSWORD" $s.mlmdPassword }}
{{- if $value }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes every mlcd pod mounts: writable scratch space under a read-only root filesystem. */}}
{{- define "mlcd.scratchVolumes" -}}
- name: home
  emptyDir:
    sizeLimit: {{ .Values.homeSizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "mlcd.scratchMounts" -}}
- name: home
  mountPath: /var/lib/mlcd
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Whether an autoscaler owns a service's replica count. Call with (dict "root" $ "service" "ingest"). */}}
{{- define "mlcd.autoscaled" -}}
{{- $v := .root.Values -}}
{{- if or (and $v.hpa.enabled (has .service $v.hpa.services)) (and $v.keda.enabled (has .service $v.keda.services)) }}true{{ end }}
{{- end }}
