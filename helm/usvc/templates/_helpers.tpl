{{/*
Labels every object of the chart carries. No Helm-only labels (helm.sh/chart,
managed-by): k8s/ is generated from this chart and applied with kubectl too.
Call with (list $ "<component>").
*/}}
{{- define "usvc.labels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/part-of: usvc
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The image of a service: registry/repository:tag, tag defaulting to appVersion. */}}
{{- define "usvc.image" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $svc.image.repository (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end }}

{{/* SPIFFE principal of a ServiceAccount: (list $ namespace serviceAccount). */}}
{{- define "usvc.principal" -}}
{{- $root := index . 0 -}}
{{- printf "%s/ns/%s/sa/%s" $root.Values.mesh.trustDomain (index . 1) (index . 2) -}}
{{- end }}

{{/*
The active scenario as a table row: which subset answers whom.
  middleBeta / coreBeta / coreStress: subset for the matching x-dev-user value ("" = no rule)
  middle: "split" (weighted canary/prod) or a subset; core: a subset
  retries: put the retry policy on every route; stress: stress timeout and circuit breaker
*/}}
{{- define "usvc.scenario" -}}
{{- $current := dict "middleBeta" "dev" "middle" "split" "coreBeta" "test" "coreStress" "test" "core" "prod" "retries" false "stress" false -}}
{{- $table := dict
  "current" $current
  "prod" (dict "middleBeta" "" "middle" "prod" "coreBeta" "" "coreStress" "" "core" "prod" "retries" false "stress" false)
  "dev" (dict "middleBeta" "" "middle" "dev" "coreBeta" "" "coreStress" "" "core" "test" "retries" false "stress" false)
  "canary" (dict "middleBeta" "" "middle" "canary" "coreBeta" "" "coreStress" "" "core" "prod" "retries" false "stress" false)
  "beta" (dict "middleBeta" "dev" "middle" "prod" "coreBeta" "test" "coreStress" "" "core" "prod" "retries" false "stress" false)
  "retry" (merge (dict "retries" true) $current)
  "stress" (merge (dict "stress" true) $current)
-}}
{{- $row := index $table .Values.routing.scenario -}}
{{- if not $row -}}
{{- fail (printf "routing.scenario: unknown scenario %q" .Values.routing.scenario) -}}
{{- end -}}
{{- toYaml $row -}}
{{- end }}

{{/*
One service: its ServiceAccount, Service, a Deployment per workload and a
PodDisruptionBudget. Call with (list $ "<service>").
*/}}
{{- define "usvc.service" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $svc := index $root.Values.services $name -}}
{{- if not $svc -}}
{{- fail (printf "services.%s is missing" $name) -}}
{{- end -}}
{{- $lc := $root.Values.lifecycle -}}
{{- $scenarioEnv := index (default (dict) (index $root.Values.routing.scenarioEnv $root.Values.routing.scenario)) $name | default (dict) -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $svc.serviceAccount }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "usvc.labels" (list $root $name) | nindent 4 }}
    app: {{ $name }}
# The app talks to no Kubernetes API; Istio's sidecar uses its own projected token.
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $svc.host }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "usvc.labels" (list $root $name) | nindent 4 }}
    app: {{ $name }}
spec:
  type: ClusterIP
  selector:
    app: {{ $name }}
  ports:
    - name: http
      port: 80
      targetPort: http
      protocol: TCP
      appProtocol: http
{{- range $wname, $w := $svc.workloads }}
{{- $env := dict }}
{{- $upstream := default $svc.upstream $w.upstream }}
{{- $computed := dict
  "SERVICE_NAME" $name
  "SERVICE_VERSION" $w.version
  "SERVICE_ENV" $w.env
  "PORT" "8080"
  "DRAIN_SECONDS" $lc.drainSeconds
  "SHUTDOWN_TIMEOUT" $lc.shutdownTimeoutSeconds
  "OTEL_TRACES_EXPORTER" (ternary "otlp" "none" (ne $root.Values.telemetry.tracing.otlpEndpoint ""))
}}
{{- with $root.Values.telemetry.tracing.otlpEndpoint }}
{{- $_ := set $computed "OTEL_EXPORTER_OTLP_ENDPOINT" . }}
{{- end }}
{{- with $upstream }}
{{- $_ := set $computed "UPSTREAM_URI" . }}
{{- end }}
{{- /* Later maps win: common, chart-computed, service, workload, scenario. */}}
{{- range $layer := list $root.Values.env $computed ($svc.extraEnv | default (dict)) ($w.extraEnv | default (dict)) $scenarioEnv }}
{{- range $k, $v := $layer }}
{{- $_ := set $env $k (toString $v) }}
{{- end }}
{{- end }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $wname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "usvc.labels" (list $root $name) | nindent 4 }}
    app: {{ $name }}
    version: {{ $w.version }}
    env: {{ $w.env }}
spec:
  replicas: {{ $w.replicas }}
  # app + env names one workload; version stays out so a new version is a
  # rollout, not an immutable-selector error.
  selector:
    matchLabels:
      app: {{ $name }}
      env: {{ $w.env }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "usvc.labels" (list $root $name) | nindent 8 }}
        app: {{ $name }}
        version: {{ $w.version }}
        env: {{ $w.env }}
        {{- if $root.Values.mesh.injectSidecar }}
        sidecar.istio.io/inject: "true"
        {{- end }}
      annotations:
        # The sidecar must outlive the app's drain and shutdown, or in-flight
        # requests lose their proxy; the app must not start before its proxy.
        proxy.istio.io/config: |
          holdApplicationUntilProxyStarts: {{ $root.Values.mesh.holdApplicationUntilProxyStarts }}
          terminationDrainDuration: {{ add $lc.drainSeconds $lc.shutdownTimeoutSeconds }}s
        {{- if $root.Values.telemetry.metrics.scrapeAnnotations }}
        # Istio's metrics merging rewrites these to the sidecar's :15020 and
        # serves the app's /metrics merged with its own.
        prometheus.io/scrape: "true"
        prometheus.io/port: "8080"
        prometheus.io/path: /metrics
        {{- end }}
    spec:
      serviceAccountName: {{ $svc.serviceAccount }}
      automountServiceAccountToken: false
      # Service links would put *_SERVICE_* variables of every Service into the env.
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      # SIGTERM -> unready at once, DRAIN_SECONDS of serving, then in-flight work
      # finishes within SHUTDOWN_TIMEOUT; the margin covers process exit. A
      # preStop sleep, if any, runs before SIGTERM and inside this period.
      terminationGracePeriodSeconds: {{ add $lc.preStopSleepSeconds $lc.drainSeconds $lc.shutdownTimeoutSeconds $lc.terminationMarginSeconds }}
      securityContext:
        runAsNonRoot: true
        runAsUser: {{ $root.Values.securityContext.runAsUser }}
        runAsGroup: {{ $root.Values.securityContext.runAsGroup }}
        fsGroup: {{ $root.Values.securityContext.runAsGroup }}
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {{ $name }}
          image: {{ include "usvc.image" (list $root $svc) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          # Spelt out (the image's entrypoint says the same) so that the local
          # mesh, which runs Deployments as processes, starts what a pod starts.
          command: ["python", "-m", "usvc", "run"]
          args: [{{ $svc.module | quote }}]
          ports:
            - name: http
              containerPort: 8080
              protocol: TCP
          env:
            {{- range $k, $v := $env }}
            - name: {{ $k }}
              value: {{ $v | quote }}
            {{- end }}
          {{- if gt (int $lc.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ $lc.preStopSleepSeconds }}"]
          {{- else }}
          # No preStop hook: on SIGTERM the app turns unready and keeps serving
          # DRAIN_SECONDS by itself; a sleep here would only delay that.
          {{- end }}
          livenessProbe:
            httpGet:
              path: {{ $root.Values.probes.liveness.path }}
              port: http
            periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: {{ $root.Values.probes.readiness.path }}
              port: http
            periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
          resources:
            {{- toYaml (default $root.Values.resources $w.resources) | nindent 12 }}
          securityContext:
            runAsNonRoot: true
            runAsUser: {{ $root.Values.securityContext.runAsUser }}
            runAsGroup: {{ $root.Values.securityContext.runAsGroup }}
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
            seccompProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        # The only writable path of the image.
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
{{- end }}
---
# One pod of the service may be evicted at a time. maxUnavailable (not
# minAvailable) so a single-replica workload never blocks a node drain. A
# rolling update (maxSurge 1, maxUnavailable 0) starts the new pod before it
# deletes an old one and is not an eviction, so the budget never blocks it.
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "usvc.labels" (list $root $name) | nindent 4 }}
    app: {{ $name }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app: {{ $name }}
{{- end }}
