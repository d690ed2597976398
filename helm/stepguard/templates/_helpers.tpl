{{/*
Named templates of the stepguard chart.

Public, for your own pod specs (see docs/deployment.md):
  stepguard.sidecar.container      the stepguard container, as one list item
  stepguard.sidecar.volumes        the volumes it needs, as list items
  stepguard.sidecar.workerVolumeMounts  the worker's mount of the socket directory
  stepguard.sidecar.workerEnv      STEPGUARD_ADDRESS for the worker

Each takes this chart's context: `.` inside this chart, `.Subcharts.stepguard`
from a parent chart that depends on it.
*/}}

{{- define "stepguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "stepguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "stepguard.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The full name with a suffix, kept within 63 characters: (dict "ctx" . "suffix" "policies") */}}
{{- define "stepguard.suffixedName" -}}
{{- $full := include "stepguard.fullname" .ctx -}}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end }}

{{- define "stepguard.policiesConfigMapName" -}}
{{- if eq .Values.policies.source "existingConfigMap" -}}
{{- .Values.policies.existingConfigMap -}}
{{- else -}}
{{- include "stepguard.suffixedName" (dict "ctx" . "suffix" "policies") -}}
{{- end -}}
{{- end }}

{{- define "stepguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stepguard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* Labels. Both take (dict "ctx" . "component" "<name>"). */}}
{{- define "stepguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stepguard.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "stepguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stepguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: stepguard
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "stepguard.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end }}

{{/* HOST:PORT, with an IPv6 host in brackets: (dict "host" "0.0.0.0" "port" 50051) */}}
{{- define "stepguard.hostPort" -}}
{{- if contains ":" .host -}}
{{- printf "[%s]:%d" .host (int .port) -}}
{{- else -}}
{{- printf "%s:%d" .host (int .port) -}}
{{- end -}}
{{- end }}

{{- define "stepguard.socketPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.server.socket.mountPath) .Values.server.socket.fileName -}}
{{- end }}

{{- define "stepguard.auditFilePath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.audit.file.mountPath) .Values.audit.file.fileName -}}
{{- end }}

{{- define "stepguard.tlsMountPath" -}}/etc/stepguard/tls{{- end }}
{{- define "stepguard.clientCAMountPath" -}}/etc/stepguard/client-ca{{- end }}
{{- define "stepguard.configMountPath" -}}/etc/stepguard/config{{- end }}
{{- define "stepguard.auditKeyMountPath" -}}/etc/stepguard/audit-key{{- end }}

{{/*
"true" when the gRPC TCP listener is on. server.tcp.enabled=auto (the default):
on in standalone mode (clients come over the network) and with TLS (TLS-only);
off for a sidecar without TLS, whose worker and probes use the Unix socket.
*/}}
{{- define "stepguard.tcpEnabled" -}}
{{- $tcp := .Values.server.tcp.enabled -}}
{{- if eq (toString $tcp) "auto" -}}
{{- if or (eq .Values.mode "standalone") .Values.tls.enabled -}}true{{- end -}}
{{- else if $tcp -}}true{{- end -}}
{{- end }}

{{/* The audit sink in force: audit.persistent=true means a file. */}}
{{- define "stepguard.auditSink" -}}
{{- if .Values.audit.persistent -}}file{{- else -}}{{ .Values.audit.sink }}{{- end -}}
{{- end }}

{{/* The audit volume type in force: audit.persistent=true turns emptyDir into a claim. */}}
{{- define "stepguard.auditVolumeType" -}}
{{- $type := .Values.audit.file.volume.type -}}
{{- if and .Values.audit.persistent (eq $type "emptyDir") -}}persistentVolumeClaim{{- else -}}{{ $type }}{{- end -}}
{{- end }}

{{/* The client CA comes from its own Secret only when one is named that is not tls.secretName. */}}
{{- define "stepguard.separateClientCA" -}}
{{- $tls := .Values.tls -}}
{{- if and $tls.enabled $tls.clientCA.enabled $tls.clientCA.secretName (ne $tls.clientCA.secretName $tls.secretName) -}}
true
{{- end -}}
{{- end }}

{{/* "grpc" or "exec": the probe kind that probes.type resolves to. */}}
{{- define "stepguard.probeType" -}}
{{- $v := .Values -}}
{{- if eq $v.probes.type "auto" -}}
{{- if and (include "stepguard.tcpEnabled" .) (not $v.tls.enabled) -}}grpc{{- else -}}exec{{- end -}}
{{- else -}}
{{- $v.probes.type -}}
{{- end -}}
{{- end }}

{{/*
Cross-field rules the schema cannot say clearly. Renders nothing; fails the
install with a message that says what to change.
*/}}
{{- define "stepguard.validate" -}}
{{- $v := .Values -}}
{{- $tcp := include "stepguard.tcpEnabled" . -}}
{{- $sink := include "stepguard.auditSink" . -}}
{{- if and (gt (int $v.server.workers) 1) (ne $sink "file") -}}
{{- fail "stepguard: server.workers > 1 needs audit.sink=file (each worker writes its own chain; stdout takes one writer)" -}}
{{- end -}}
{{- if and (eq $v.mode "standalone") (not $tcp) -}}
{{- fail "stepguard: mode=standalone serves its clients over TCP; set server.tcp.enabled=auto (or true)" -}}
{{- end -}}
{{- if not (or $tcp $v.server.socket.enabled) -}}
{{- fail "stepguard: no listener; set server.socket.enabled=true or server.tcp.enabled=true" -}}
{{- end -}}
{{- if and $tcp $v.metrics.enabled (eq (int $v.server.tcp.port) (int $v.metrics.port)) -}}
{{- fail "stepguard: server.tcp.port and metrics.port must differ" -}}
{{- end -}}
{{- if $v.authzen.enabled -}}
{{- if or (and $tcp (eq (int $v.authzen.port) (int $v.server.tcp.port))) (and $v.metrics.enabled (eq (int $v.authzen.port) (int $v.metrics.port))) -}}
{{- fail "stepguard: authzen.port must differ from server.tcp.port and metrics.port" -}}
{{- end -}}
{{- if and (eq $v.mode "standalone") (not $v.tls.enabled) -}}
{{- fail "stepguard: in standalone mode AuthZEN clients come over the network, and without TLS it listens on loopback only; set tls.enabled=true (with authzen.bindAddress=0.0.0.0) or authzen.enabled=false" -}}
{{- end -}}
{{- if and (not $v.tls.enabled) (not (has $v.authzen.bindAddress (list "127.0.0.1" "localhost" "::1"))) -}}
{{- fail (printf "stepguard: authzen.bindAddress %s is not loopback; plain HTTP authenticates no caller, so keep it on 127.0.0.1 or set tls.enabled=true (HTTPS, with tls.clientCA for mutual TLS)" $v.authzen.bindAddress) -}}
{{- end -}}
{{- end -}}
{{- $probe := include "stepguard.probeType" . -}}
{{- if and (eq $probe "grpc") (not $tcp) -}}
{{- fail "stepguard: probes.type=grpc needs server.tcp.enabled=true (Kubernetes gRPC probes dial a TCP port); use probes.type=exec or auto" -}}
{{- end -}}
{{- if and (eq $probe "grpc") $v.tls.enabled -}}
{{- fail "stepguard: Kubernetes gRPC probes cannot speak TLS; with tls.enabled=true use probes.type=exec or auto (and server.socket.enabled=true)" -}}
{{- end -}}
{{- if and (eq $probe "exec") (not $v.server.socket.enabled) -}}
{{- fail "stepguard: the exec probe checks health over the Unix socket; set server.socket.enabled=true (with TLS on or TCP off, probes.type=auto uses the exec probe)" -}}
{{- end -}}
{{- if and (eq $v.policies.source "existingConfigMap") (not $v.policies.existingConfigMap) -}}
{{- fail "stepguard: policies.source=existingConfigMap needs policies.existingConfigMap, the ConfigMap's name" -}}
{{- end -}}
{{- if and (eq $v.policies.source "volume") (not $v.policies.volume) -}}
{{- fail "stepguard: policies.source=volume needs policies.volume, a volume source such as {persistentVolumeClaim: {claimName: policies}}" -}}
{{- end -}}
{{- if and (eq $v.policies.source "values") $v.policies.files -}}
{{- $cedar := 0 -}}
{{- $schemas := list -}}
{{- range $name, $_ := $v.policies.files -}}
{{- if hasSuffix ".cedar" $name }}{{ $cedar = add1 $cedar }}{{ end -}}
{{- if or (hasSuffix ".cedarschema" $name) (hasSuffix ".cedarschema.json" $name) }}{{ $schemas = append $schemas $name }}{{ end -}}
{{- end -}}
{{- if eq $cedar 0 -}}
{{- fail "stepguard: policies.files has no *.cedar policy file; add at least one" -}}
{{- end -}}
{{- if ne (len $schemas) 1 -}}
{{- fail (printf "stepguard: policies.files needs exactly one schema (*.cedarschema or *.cedarschema.json), found %d: %s" (len $schemas) (join ", " $schemas)) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $sink "file") (eq $v.audit.file.volume.type "existingClaim") (not $v.audit.file.volume.existingClaim) -}}
{{- fail "stepguard: audit.file.volume.type=existingClaim needs audit.file.volume.existingClaim, the claim's name" -}}
{{- end -}}
{{- if and $v.tls.enabled (not $v.tls.secretName) -}}
{{- fail "stepguard: tls.enabled=true needs tls.secretName, a kubernetes.io/tls Secret" -}}
{{- end -}}
{{- if and $v.tls.enabled (not $tcp) -}}
{{- fail "stepguard: TLS applies to the TCP listener; set server.tcp.enabled=auto (or true) or tls.enabled=false" -}}
{{- end -}}
{{- if and $v.audit.hmacKeySecret.name (ne $sink "file") -}}
{{- fail "stepguard: audit.hmacKeySecret keys the hash chain of a file trail; set audit.persistent=true (or audit.sink=file), or drop audit.hmacKeySecret" -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (eq $v.mode "sidecar") (not $v.networkPolicy.podSelector) (not $v.metrics.serviceMonitor.podSelector) (not $v.exampleWorker.enabled) -}}
{{- fail "stepguard: in sidecar mode the NetworkPolicy applies to your worker pods; set networkPolicy.podSelector to their labels" -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (eq $v.mode "standalone") (not $v.networkPolicy.clientsFrom) (not $v.networkPolicy.extraIngress) -}}
{{- fail "stepguard: the NetworkPolicy would admit no client of the decision point; set networkPolicy.clientsFrom to the pods or namespaces that ask (NetworkPolicyPeers)" -}}
{{- end -}}
{{- if and $v.tls.clientCA.enabled (not $v.tls.enabled) -}}
{{- fail "stepguard: tls.clientCA.enabled=true needs tls.enabled=true" -}}
{{- end -}}
{{- if and $v.tls.bindWorkloadIdentity (not $v.tls.clientCA.enabled) -}}
{{- fail "stepguard: tls.bindWorkloadIdentity=true takes the identity from client certificates; set tls.enabled=true and tls.clientCA.enabled=true" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "stepguard: metrics.serviceMonitor.enabled=true needs metrics.enabled=true" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (eq $v.mode "sidecar") (not $v.metrics.serviceMonitor.podSelector) (not $v.exampleWorker.enabled) -}}
{{- fail "stepguard: in sidecar mode the ServiceMonitor scrapes your worker pods; set metrics.serviceMonitor.podSelector to their labels" -}}
{{- end -}}
{{- if and $v.exampleWorker.enabled (eq $v.mode "standalone") $v.tls.enabled -}}
{{- fail "stepguard: the example worker speaks plaintext gRPC; disable exampleWorker or tls in standalone mode" -}}
{{- end -}}
{{- if and $v.fleet.ship.enabled (ne $sink "file") -}}
{{- fail "stepguard: fleet.ship.enabled=true ships a file trail; set audit.persistent=true (or audit.sink=file)" -}}
{{- end -}}
{{- if and (or $v.fleet.ship.enabled $v.fleet.collector.enabled) (not $v.fleet.nats.servers) -}}
{{- fail "stepguard: the fleet needs fleet.nats.servers, the nats:// URLs of the JetStream cluster" -}}
{{- end -}}
{{- if and $v.fleet.collector.enabled (not $v.fleet.collector.storeSecret.name) -}}
{{- fail "stepguard: fleet.collector.enabled=true needs fleet.collector.storeSecret.name, a Secret holding the PostgreSQL DSN" -}}
{{- end -}}
{{- if and $v.fleet.ship.enabled (or (eq (int $v.fleet.ship.metricsPort) (int $v.metrics.port)) (eq (int $v.fleet.ship.metricsPort) (int $v.server.tcp.port))) -}}
{{- fail "stepguard: fleet.ship.metricsPort must differ from metrics.port and server.tcp.port" -}}
{{- end -}}
{{- if and $v.exampleWorker.enabled $v.tls.bindWorkloadIdentity -}}
{{- fail "stepguard: the example worker has no client certificate, so tls.bindWorkloadIdentity=true would deny all it asks; disable one of them" -}}
{{- end -}}
{{- end }}

{{/*
Worker processes (--workers): server.workers, else the CPU limit rounded up
("1500m" and "1.5" give 2), at least 1; 1 without a CPU limit (the node's
cores are not the pod's) and with the trail on stdout (one writer).
*/}}
{{- define "stepguard.workers" -}}
{{- $v := .Values -}}
{{- if gt (int $v.server.workers) 0 -}}
{{- int $v.server.workers -}}
{{- else if ne (include "stepguard.auditSink" .) "file" -}}
1
{{- else -}}
{{- $cpu := toString (dig "limits" "cpu" "" ($v.resources | default dict)) -}}
{{- if not $cpu -}}
1
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (add (int (trimSuffix "m" $cpu)) 999) 1000) -}}
{{- else -}}
{{- max 1 (int (ceil (float64 $cpu))) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The stepguard serve arguments (the image's entrypoint is `stepguard serve`). */}}
{{- define "stepguard.args" -}}
{{- $v := .Values -}}
- --policies
- {{ $v.policies.mountPath | quote }}
{{- if $v.policies.watch }}
- --watch
{{- end }}
- --listen
{{- if include "stepguard.tcpEnabled" . }}
- {{ include "stepguard.hostPort" (dict "host" $v.server.tcp.bindAddress "port" $v.server.tcp.port) | quote }}
{{- else }}
- none
{{- end }}
{{- if $v.server.socket.enabled }}
- --socket
- {{ include "stepguard.socketPath" . | quote }}
{{- end }}
- --metrics-listen
{{- if $v.metrics.enabled }}
- {{ include "stepguard.hostPort" (dict "host" $v.metrics.bindAddress "port" $v.metrics.port) | quote }}
{{- else }}
- "off"
{{- end }}
- --audit-file
{{- if eq (include "stepguard.auditSink" .) "file" }}
- {{ include "stepguard.auditFilePath" . | quote }}
{{- else }}
- "-"
{{- end }}
{{- if $v.audit.hmacKeySecret.name }}
- --audit-hmac-key-file
- {{ printf "%s/%s" (include "stepguard.auditKeyMountPath" .) $v.audit.hmacKeySecret.key | quote }}
{{- end }}
- --grace
- {{ $v.server.gracePeriodSeconds | toString | quote }}
- --workers
- {{ include "stepguard.workers" . | quote }}
{{- if $v.authzen.enabled }}
- --authzen-listen
- {{ include "stepguard.hostPort" (dict "host" $v.authzen.bindAddress "port" $v.authzen.port) | quote }}
{{- end }}
{{- if $v.server.config }}
- --config
- {{ printf "%s/stepguard.yaml" (include "stepguard.configMountPath" .) | quote }}
{{- end }}
{{- if $v.tls.enabled }}
- --tls-cert
- {{ printf "%s/%s" (include "stepguard.tlsMountPath" .) $v.tls.certKey | quote }}
- --tls-key
- {{ printf "%s/%s" (include "stepguard.tlsMountPath" .) $v.tls.keyKey | quote }}
{{- if $v.tls.clientCA.enabled }}
- --tls-client-ca
{{- if include "stepguard.separateClientCA" . }}
- {{ printf "%s/%s" (include "stepguard.clientCAMountPath" .) $v.tls.clientCA.key | quote }}
{{- else }}
- {{ printf "%s/%s" (include "stepguard.tlsMountPath" .) $v.tls.clientCA.key | quote }}
{{- end }}
{{- end }}
{{- if $v.tls.bindWorkloadIdentity }}
- --bind-workload-identity
{{- end }}
{{- end }}
{{- range $v.server.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* One probe: (dict "ctx" . "kind" "readiness" "service" "stepguard.v1.Authorizer") */}}
{{- define "stepguard.probe" -}}
{{- $v := .ctx.Values -}}
{{- $p := index $v.probes .kind -}}
{{- if eq (include "stepguard.probeType" .ctx) "grpc" -}}
grpc:
  port: {{ int $v.server.tcp.port }}
  {{- if .service }}
  service: {{ .service | quote }}
  {{- end }}
{{- else -}}
exec:
  {{- /* `stepguard healthcheck` over the Unix socket: exit 0 only for SERVING. */}}
  command:
    - stepguard
    - healthcheck
    - --socket
    - {{ include "stepguard.socketPath" .ctx | quote }}
    - --service
    - {{ .service | quote }}
    - --timeout
    - {{ max 1 (sub (int $p.timeoutSeconds) 1) | toString | quote }}
{{- end }}
periodSeconds: {{ int $p.periodSeconds }}
timeoutSeconds: {{ int $p.timeoutSeconds }}
failureThreshold: {{ int $p.failureThreshold }}
{{- end }}

{{/* The stepguard container: (dict "ctx" . "native" true|false). */}}
{{- define "stepguard.container" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
- name: stepguard
  image: {{ include "stepguard.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  args:
    {{- include "stepguard.args" $ctx | nindent 4 }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
  {{- $tcp := include "stepguard.tcpEnabled" $ctx }}
  {{- if or $tcp $v.metrics.enabled $v.authzen.enabled }}
  ports:
    {{- if $tcp }}
    - name: sg-grpc
      containerPort: {{ int $v.server.tcp.port }}
      protocol: TCP
    {{- end }}
    {{- if $v.metrics.enabled }}
    - name: sg-metrics
      containerPort: {{ int $v.metrics.port }}
      protocol: TCP
    {{- end }}
    {{- if $v.authzen.enabled }}
    - name: sg-authzen
      containerPort: {{ int $v.authzen.port }}
      protocol: TCP
    {{- end }}
  {{- end }}
  startupProbe:
    {{- include "stepguard.probe" (dict "ctx" $ctx "kind" "startup" "service" "stepguard.v1.Authorizer") | nindent 4 }}
  readinessProbe:
    {{- include "stepguard.probe" (dict "ctx" $ctx "kind" "readiness" "service" "stepguard.v1.Authorizer") | nindent 4 }}
  livenessProbe:
    {{- include "stepguard.probe" (dict "ctx" $ctx "kind" "liveness" "service" "") | nindent 4 }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: stepguard-tmp
      mountPath: /tmp
    {{- if ne $v.policies.source "image" }}
    - name: stepguard-policies
      mountPath: {{ $v.policies.mountPath | quote }}
      readOnly: true
    {{- end }}
    {{- if $v.server.socket.enabled }}
    - name: stepguard-socket
      mountPath: {{ $v.server.socket.mountPath | quote }}
    {{- end }}
    {{- if eq (include "stepguard.auditSink" $ctx) "file" }}
    - name: stepguard-audit
      mountPath: {{ $v.audit.file.mountPath | quote }}
    {{- end }}
    {{- if $v.audit.hmacKeySecret.name }}
    - name: stepguard-audit-key
      mountPath: {{ include "stepguard.auditKeyMountPath" $ctx | quote }}
      readOnly: true
    {{- end }}
    {{- if $v.server.config }}
    - name: stepguard-config
      mountPath: {{ include "stepguard.configMountPath" $ctx | quote }}
      readOnly: true
    {{- end }}
    {{- if $v.tls.enabled }}
    - name: stepguard-tls
      mountPath: {{ include "stepguard.tlsMountPath" $ctx | quote }}
      readOnly: true
    {{- if include "stepguard.separateClientCA" $ctx }}
    - name: stepguard-client-ca
      mountPath: {{ include "stepguard.clientCAMountPath" $ctx | quote }}
      readOnly: true
    {{- end }}
    {{- end }}
{{- end }}

{{/*
The sidecar container, as one list item. With sidecar.nativeSidecar=true (the
default) it carries restartPolicy: Always and belongs under initContainers;
otherwise under containers.
*/}}
{{- define "stepguard.sidecar.container" -}}
{{- include "stepguard.validate" . -}}
{{- include "stepguard.container" (dict "ctx" . "native" .Values.sidecar.nativeSidecar) -}}
{{- if .Values.fleet.ship.enabled }}
{{ include "stepguard.ship.container" (dict "ctx" . "native" .Values.sidecar.nativeSidecar) }}
{{- end -}}
{{- end }}

{{/*
The shipper (fleet.ship.enabled): `stepguard ship` beside the sidecar, tailing this
pod's own trail (its file names the pod) and publishing it to NATS JetStream. A
process of its own: it never slows a decision. No probes: a broker that is down
must not make the pod unready or restart anything (the shipper waits and says so in
its metrics). Its state (cursor, status, watermark) is a directory beside the trail.
*/}}
{{- define "stepguard.ship.container" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $dir := trimSuffix "/" $v.audit.file.mountPath -}}
- name: stepguard-ship
  image: {{ include "stepguard.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  command: ["stepguard"]
  args:
    - ship
    - --trail
    - {{ include "stepguard.auditFilePath" $ctx | quote }}
    - --sidecar
    - $(POD_NAME)
    - --state-dir
    - {{ printf "%s/.stepguard-ship-$(POD_NAME)" $dir | quote }}
    - --replicas
    - {{ $v.fleet.nats.streamReplicas | quote }}
    - --metrics-listen
    - {{ printf "0.0.0.0:%d" (int $v.fleet.ship.metricsPort) | quote }}
    {{- if $v.fleet.ship.pruneCommitted }}
    - --prune-committed
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- include "stepguard.fleet.natsEnv" $ctx | nindent 4 }}
  ports:
    - name: sg-ship-metrics
      containerPort: {{ int $v.fleet.ship.metricsPort }}
      protocol: TCP
  resources:
    {{- toYaml $v.fleet.ship.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: stepguard-audit
      mountPath: {{ $v.audit.file.mountPath | quote }}
    {{- include "stepguard.fleet.natsMounts" $ctx | nindent 4 }}
{{- end }}

{{/* NATS settings as environment variables: servers, and the files of its secrets. */}}
{{- define "stepguard.fleet.natsEnv" -}}
{{- $n := .Values.fleet.nats -}}
- name: STEPGUARD_NATS_SERVERS
  value: {{ join "," $n.servers | quote }}
{{- if $n.credentialsSecret.name }}
- name: STEPGUARD_NATS_CREDS_FILE
  value: {{ printf "/etc/stepguard/nats-creds/%s" $n.credentialsSecret.key | quote }}
{{- end }}
{{- if $n.tlsSecret.name }}
- name: STEPGUARD_NATS_TLS_CA
  value: /etc/stepguard/nats-tls/ca.crt
- name: STEPGUARD_NATS_TLS_CERT
  value: /etc/stepguard/nats-tls/tls.crt
- name: STEPGUARD_NATS_TLS_KEY
  value: /etc/stepguard/nats-tls/tls.key
{{- end }}
{{- end }}

{{- define "stepguard.fleet.natsMounts" -}}
{{- $n := .Values.fleet.nats -}}
{{- if $n.credentialsSecret.name }}
- name: stepguard-nats-creds
  mountPath: /etc/stepguard/nats-creds
  readOnly: true
{{- end }}
{{- if $n.tlsSecret.name }}
- name: stepguard-nats-tls
  mountPath: /etc/stepguard/nats-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "stepguard.fleet.natsVolumes" -}}
{{- $n := .Values.fleet.nats -}}
{{- if $n.credentialsSecret.name }}
- name: stepguard-nats-creds
  secret:
    secretName: {{ $n.credentialsSecret.name }}
    defaultMode: {{ int $n.defaultMode }}
{{- end }}
{{- if $n.tlsSecret.name }}
- name: stepguard-nats-tls
  secret:
    secretName: {{ $n.tlsSecret.name }}
    defaultMode: {{ int $n.defaultMode }}
{{- end }}
{{- end }}

{{/* The volumes the stepguard container mounts, as list items. */}}
{{- define "stepguard.sidecar.volumes" -}}
{{- include "stepguard.validate" . -}}
{{- $v := .Values -}}
- name: stepguard-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- if has $v.policies.source (list "values" "existingConfigMap") }}
- name: stepguard-policies
  configMap:
    name: {{ include "stepguard.policiesConfigMapName" . }}
{{- else if eq $v.policies.source "volume" }}
- name: stepguard-policies
  {{- toYaml $v.policies.volume | nindent 2 }}
{{- end }}
{{- if $v.server.socket.enabled }}
- name: stepguard-socket
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- if eq (include "stepguard.auditSink" .) "file" }}
- name: stepguard-audit
  {{- $vol := $v.audit.file.volume }}
  {{- $type := include "stepguard.auditVolumeType" . }}
  {{- if eq $type "emptyDir" }}
  emptyDir:
    {{- toYaml $vol.emptyDir | nindent 4 }}
  {{- else if eq $type "persistentVolumeClaim" }}
  persistentVolumeClaim:
    claimName: {{ include "stepguard.suffixedName" (dict "ctx" . "suffix" "audit") }}
  {{- else }}
  persistentVolumeClaim:
    claimName: {{ $vol.existingClaim }}
  {{- end }}
{{- end }}
{{- if $v.server.config }}
- name: stepguard-config
  configMap:
    name: {{ include "stepguard.suffixedName" (dict "ctx" . "suffix" "config") }}
{{- end }}
{{- if $v.tls.enabled }}
- name: stepguard-tls
  secret:
    secretName: {{ $v.tls.secretName }}
    defaultMode: {{ int $v.tls.defaultMode }}
{{- if include "stepguard.separateClientCA" . }}
- name: stepguard-client-ca
  secret:
    secretName: {{ $v.tls.clientCA.secretName }}
    defaultMode: {{ int $v.tls.defaultMode }}
{{- end }}
{{- end }}
{{- if $v.audit.hmacKeySecret.name }}
- name: stepguard-audit-key
  secret:
    secretName: {{ $v.audit.hmacKeySecret.name }}
    defaultMode: {{ int $v.audit.hmacKeySecret.defaultMode }}
    items:
      - key: {{ $v.audit.hmacKeySecret.key | quote }}
        path: {{ $v.audit.hmacKeySecret.key | quote }}
{{- end }}
{{- if $v.fleet.ship.enabled }}
{{- include "stepguard.fleet.natsVolumes" . | nindent 0 }}
{{- end }}
{{- end }}

{{/* The worker's mount of the socket directory, read-only (connecting needs no write access to the mount). */}}
{{- define "stepguard.sidecar.workerVolumeMounts" -}}
{{- if include "stepguard.sidecar.workerUsesSocket" . -}}
- name: stepguard-socket
  mountPath: {{ .Values.server.socket.mountPath | quote }}
  readOnly: true
{{- end -}}
{{- end }}

{{/*
Where the worker reaches its sidecar, as a gRPC target in STEPGUARD_ADDRESS:
the Unix socket, or TCP on localhost when there is no socket or when workload
identity binding needs the worker's client certificate (TLS).
*/}}
{{- define "stepguard.sidecar.workerUsesSocket" -}}
{{- if and .Values.server.socket.enabled (not .Values.tls.bindWorkloadIdentity) -}}true{{- end -}}
{{- end }}

{{- define "stepguard.sidecar.workerEnv" -}}
- name: STEPGUARD_ADDRESS
  {{- if include "stepguard.sidecar.workerUsesSocket" . }}
  value: {{ printf "unix://%s" (include "stepguard.socketPath" .) | quote }}
  {{- else }}
  value: {{ printf "localhost:%d" (int .Values.server.tcp.port) | quote }}
  {{- end }}
{{- end }}

{{/* Pod-level fields shared by the pods the chart runs itself. */}}
{{- define "stepguard.podSpec" -}}
serviceAccountName: {{ include "stepguard.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod template annotations: a config change rolls the pods; a policy change does not (--watch reloads it). */}}
{{- define "stepguard.podAnnotations" -}}
{{- if .Values.server.config }}
checksum/config: {{ toYaml .Values.server.config | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
