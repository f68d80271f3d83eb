#!/usr/bin/env python3
"""Helpers for scripts/check-chart, working on `helm template` output (needs PyYAML).

  manifests.py split RENDERED CORE_OUT
      Writes the documents of kinds Kubernetes itself defines to CORE_OUT and prints one
      `apiVersion kind name` line per document of a CRD kind (no offline schema exists for them).

  manifests.py run-pki RENDERED WORK_DIR WEFTCTL WEFT_CONTROL KUBECTL
      Does on this machine what the rendered objects would do in a cluster, with the real
      binaries: runs the generate-mode hook Job's two containers (weftctl certs init, then its
      kubectl command with --dry-run=client), lays out the PKI directory exactly as the
      Deployment's projected volume maps the Secrets' keys, and starts weft-control with the
      Deployment's own arguments (addresses moved to 127.0.0.1:0, paths into WORK_DIR). Passes
      when it starts and its /ready and /live probes answer 200 on the metrics port.

  manifests.py same HELM_RENDERED WEFTCTL_RENDERED
      Passes when `weftctl install` printed the objects `helm template` did, field for field,
      but for what each makes at random or names itself by: the admin token, the webhook's
      certificate and key and caBundle, the pod template's checksum annotation and the
      app.kubernetes.io/managed-by label (each must be there, not empty), and the Namespace
      weftctl adds (Helm creates it with --create-namespace).

  manifests.py monitoring RENDERED RULES_OUT
      Writes the rendered PrometheusRule's groups to RULES_OUT (for `promtool check rules`) and
      checks the Grafana dashboard ConfigMap parses, every panel with a query.

  manifests.py resources CRDS GOOD_DIR BAD_DIR
      Checks custom resources against the CRDs' OpenAPI schemas as the API server would (its
      `nullable` and int-or-string read as JSON Schema): every document in GOOD_DIR must pass;
      each file in BAD_DIR must fail at the field its first line names (`# expect: spec.mode`).
"""

import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import jsonschema
import yaml

# Kinds whose schemas come from CRDs, which kubernetes-validate cannot know offline.
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
START_TIMEOUT = 20


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered, core_out):
    core = []
    for doc in load(rendered):
        if doc["apiVersion"].startswith(CRD_GROUPS):
            print(doc["apiVersion"], doc["kind"], doc["metadata"]["name"])
        else:
            core.append(doc)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)


def find(docs, kind, name=None):
    for doc in docs:
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    return None


def run_job(job, work, weftctl, kubectl, secrets):
    """Runs the hook Job's containers in order; the Secret kubectl would create joins `secrets`."""
    spec = job["spec"]["template"]["spec"]
    pki = os.path.join(work, "job-pki")
    mounts = {"/pki": pki, "/tmp": os.path.join(work, "job-tmp")}

    def local(arg):
        """Moves a `...=<mount path>[/file]` argument to the directory standing for the mount."""
        for inside, outside in mounts.items():
            match = re.fullmatch(f"(.*=){re.escape(inside)}(/.*)?", arg)
            if match:
                return match.group(1) + outside + (match.group(2) or "")
        return arg

    init = spec["initContainers"][0]
    command = [weftctl] + [local(a) for a in init["command"][1:]]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    store = spec["containers"][0]
    args = [local(a) for a in store["args"]] + ["--dry-run=client", "-o", "json"]
    env = {"PATH": "/usr/bin:/bin", "HOME": work}
    out = subprocess.run([kubectl] + args, check=True, capture_output=True, env=env, text=True)
    secret = json.loads(out.stdout)
    secrets[secret["metadata"]["name"]] = secret
    return " ".join(["weftctl"] + init["command"][1:]) + " && kubectl " + " ".join(store["args"])


def lay_out_projected(volume, secrets, directory):
    """Writes the files a projected volume of Secrets would show, by the volume's own items."""
    os.makedirs(directory, exist_ok=True)
    for source in volume["projected"]["sources"]:
        name = source["secret"]["name"]
        if name not in secrets:
            raise SystemExit(f"the projected volume needs Secret {name}, which nothing creates")
        data = secrets[name]["data"]
        for item in source["secret"]["items"]:
            if item["key"] not in data:
                raise SystemExit(f"Secret {name} has no key {item['key']}")
            with open(os.path.join(directory, item["path"]), "wb") as f:
                f.write(base64.b64decode(data[item["key"]]))


def control_args(container, work, pki_dir, token_file, webhook_dir):
    rewritten = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        if flag.endswith("-addr"):
            value = "127.0.0.1:0"
        elif flag == "--data-dir":
            value = os.path.join(work, "data")
        elif flag == "--pki-dir":
            value = pki_dir
        elif flag == "--admin-token-file":
            value = token_file
        elif flag in ("--webhook-cert", "--webhook-key"):
            value = os.path.join(webhook_dir, os.path.basename(value))
        rewritten.append(f"{flag}={value}")
    return rewritten


def probe(metrics_addr, path):
    with urllib.request.urlopen(f"http://{metrics_addr}{path}", timeout=5) as response:
        return response.status


def read_only(pki_dir, command):
    """As root, runs `command` in a mount namespace of its own where `pki_dir` is read-only, as
    the Secret volume is in the pod; elsewhere, as it is."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        return command
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", pki_dir] + command


def post_review(addr, client_config, review):
    """POSTs an AdmissionReview as the API server would: TLS verified against the
    configuration's caBundle for its Service's name, on its path; returns the response."""
    service = client_config["service"]
    context = ssl.create_default_context(
        cadata=base64.b64decode(client_config["caBundle"]).decode()
    )
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as tcp:
        server_name = f"{service['name']}.{service['namespace']}.svc"
        with context.wrap_socket(tcp, server_hostname=server_name) as tls:
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            connection.sock = tls
            connection.request(
                "POST", service["path"], json.dumps(review), {"Content-Type": "application/json"}
            )
            return json.loads(connection.getresponse().read())["response"]


def admission_review(group, kind, resource, obj):
    """An AdmissionReview of the CREATE of `obj` in namespace shop, as the API server sends it."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "check-chart",
            "kind": {"group": group, "version": obj["apiVersion"].split("/")[-1], "kind": kind},
            "resource": {"group": group, "version": obj["apiVersion"].split("/")[-1], "resource": resource},
            "name": obj["metadata"]["name"],
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "check-chart"},
            "object": obj,
        },
    }


def review_webhook(addr, client_config):
    """Sends the injecting webhook an opted-in Pod; it must patch it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": {"weft.io/inject": "enabled"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    response = post_review(addr, client_config, admission_review("", "Pod", "pods", pod))
    if not response["allowed"] or response.get("patchType") != "JSONPatch":
        raise SystemExit(f"the webhook did not patch an opted-in pod: {response}")
    patch = json.loads(base64.b64decode(response["patch"]))
    return f"webhook {client_config['service']['path']} patched an opted-in pod ({len(patch)} operations)"


def review_validation(addr, client_config):
    """Sends the validating webhook an AuthorizationPolicy with a misspelt field; it must
    refuse it naming the field."""
    policy = {
        "apiVersion": "policy.weft.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-to-api", "namespace": "shop"},
        "spec": {"from": [{"namespaces": ["shop"]}], "htpp": [{"method": "GET"}]},
    }
    review = admission_review("policy.weft.io", "AuthorizationPolicy", "authorizationpolicies", policy)
    response = post_review(addr, client_config, review)
    message = response.get("status", {}).get("message", "")
    if response["allowed"] or "htpp" not in message:
        raise SystemExit(f"the webhook did not refuse a misspelt AuthorizationPolicy: {response}")
    return f"webhook {client_config['service']['path']} refused a misspelt AuthorizationPolicy: {message}"


def start_api_server(binary, work):
    """Starts weft-fake-apiserver (built beside weft-control) for a control plane that keeps
    its policy in the API server, where the pod would reach the cluster's; returns the process
    and its kubeconfig."""
    fake = os.path.join(os.path.dirname(binary), "weft-fake-apiserver")
    directory = os.path.join(work, "apiserver")
    os.makedirs(directory, exist_ok=True)
    log_path = os.path.join(directory, "fake-apiserver.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([fake, "--dir", directory], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while "listening on" not in open(log_path).read():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"weft-fake-apiserver did not start: {open(log_path).read()}")
        time.sleep(0.1)
    return proc, os.path.join(directory, "kubeconfig")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_control(binary, args, container, log_path, pki_dir, webhook_config):
    """Starts weft-control, checks its probes and webhook, stops it; returns what it saw."""
    api_server = None
    if "--policy-store=kubernetes" in args:
        api_server, kubeconfig = start_api_server(binary, os.path.dirname(log_path))
        args = args + [f"--kubeconfig={kubeconfig}"]
    try:
        return run_control(binary, args, container, log_path, pki_dir, webhook_config)
    finally:
        if api_server is not None:
            stop(api_server)


def run_control(binary, args, container, log_path, pki_dir, webhook_config):
    with open(log_path, "w") as log:
        command = read_only(pki_dir, [binary] + args)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        started = None
        while started is None:
            text = open(log_path).read()
            started = re.search(r".*weft-control started.*metrics=(\S+) webhook=(\S+)", text)
            if proc.poll() is not None:
                raise SystemExit(f"weft-control exited {proc.returncode}: {text.strip()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"weft-control did not start within {START_TIMEOUT}s: {text}")
            time.sleep(0.1)
        for kind in ("readinessProbe", "livenessProbe"):
            path = container[kind]["httpGet"]["path"]
            status = probe(started.group(1), path)
            if status != 200:
                raise SystemExit(f"{kind} {path} answered {status}")
        return "\n".join([
            started.group(0).strip(),
            review_webhook(started.group(2), webhook_config["inject"]),
            review_validation(started.group(2), webhook_config["validate"]),
        ])
    finally:
        stop(proc)


def run_pki(rendered, work, weftctl, weft_control, kubectl):
    docs = load(rendered)
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    job = find(docs, "Job", "weft-pki-init")
    if job is not None:
        print("job: " + run_job(job, work, weftctl, kubectl, secrets))
    deployment = find(docs, "Deployment", "weft-control")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = pod["containers"][0]
    pki_dir = os.path.join(work, "pki")
    lay_out_projected(volumes["pki"], secrets, pki_dir)
    token_volume = volumes["admin-token"]["secret"]
    token_file = os.path.join(work, "admin-token")
    with open(token_file, "wb") as f:
        f.write(base64.b64decode(secrets[token_volume["secretName"]]["data"]["token"]))
    webhook_dir = os.path.join(work, "webhook")
    os.makedirs(webhook_dir, exist_ok=True)
    webhook_secret = secrets[volumes["webhook-tls"]["secret"]["secretName"]]["data"]
    for key in ("tls.crt", "tls.key"):
        with open(os.path.join(webhook_dir, key), "wb") as f:
            f.write(base64.b64decode(webhook_secret[key]))
    webhook_config = {
        "inject": find(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"],
        "validate": find(docs, "ValidatingWebhookConfiguration")["webhooks"][0]["clientConfig"],
    }
    args = control_args(container, work, pki_dir, token_file, webhook_dir)
    print("files: " + " ".join(sorted(os.listdir(pki_dir))))
    print("weft-control " + " ".join(args))
    print(start_control(
        weft_control, args, container, os.path.join(work, "weft-control.log"), pki_dir,
        webhook_config,
    ))


# (kind, name) -> paths of fields that differ by design; "*" walks every item of a list.
RANDOM_FIELDS = {
    ("Secret", "weft-admin-token"): [["data", "token"]],
    ("Secret", "weft-webhook-tls"): [["data", "tls.crt"], ["data", "tls.key"], ["data", "ca.crt"]],
    ("MutatingWebhookConfiguration", "weft-inject"): [["webhooks", "*", "clientConfig", "caBundle"]],
    ("ValidatingWebhookConfiguration", "weft-validate"): [["webhooks", "*", "clientConfig", "caBundle"]],
    ("Deployment", "weft-control"): [
        ["spec", "template", "metadata", "annotations", "checksum/config"],
        ["spec", "template", "metadata", "labels", "app.kubernetes.io/managed-by"],
    ],
}


def mask(node, path, where):
    """Replaces the field at `path` with a marker, failing if it is missing or empty."""
    head, *rest = path
    items = list(range(len(node))) if head == "*" else [head]
    for item in items:
        if not rest:
            if not node.get(item):
                sys.exit(f"{where}: {'.'.join(map(str, path))} is missing or empty")
            node[item] = "<differs by design>"
        else:
            mask(node[item], rest, where)


def keyed(path, source):
    objects = {}
    for doc in load(path):
        if source == "weftctl" and doc["kind"] == "Namespace":
            continue
        key = (doc["kind"], doc["metadata"]["name"])
        where = f"{source}: {key[0]}/{key[1]}"
        mask(doc, ["metadata", "labels", "app.kubernetes.io/managed-by"], where)
        for path in RANDOM_FIELDS.get(key, []):
            mask(doc, path, where)
        objects[key] = doc
    return objects


def same(helm_rendered, weftctl_rendered):
    helm = keyed(helm_rendered, "helm")
    weftctl = keyed(weftctl_rendered, "weftctl")
    problems = [f"only helm renders {k}/{n}" for k, n in sorted(helm.keys() - weftctl.keys())]
    problems += [f"only weftctl prints {k}/{n}" for k, n in sorted(weftctl.keys() - helm.keys())]
    for key in sorted(helm.keys() & weftctl.keys()):
        if helm[key] != weftctl[key]:
            import difflib
            dump = lambda doc: yaml.safe_dump(doc, sort_keys=True).splitlines()
            diff = difflib.unified_diff(dump(helm[key]), dump(weftctl[key]), "helm", "weftctl", lineterm="")
            problems.append(f"{key[0]}/{key[1]} differs:\n" + "\n".join(diff))
    if problems:
        sys.exit("\n".join(problems))
    print(f"{len(helm)} objects the same")


def json_schema(node):
    """An OpenAPI v3 structural schema as JSON Schema: `nullable` and int-or-string spelled out."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: json_schema(v) for name, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = json_schema(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [json_schema(v) for v in value]
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    return out


def field_path(error):
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    # A missing required field is reported on its parent.
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        if missing:
            path += f".{missing.group(1)}" if path else missing.group(1)
    return path


def resources(crds, good_dir, bad_dir):
    schemas = {}
    for crd in load(crds):
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = json_schema(version["schema"]["openAPIV3Schema"])
    problems, checked = [], 0

    def errors(doc):
        schema = schemas.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            return [f"no CRD for {doc['apiVersion']} {doc['kind']}"]
        return sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)

    for name in sorted(os.listdir(good_dir)):
        for doc in load(os.path.join(good_dir, name)):
            checked += 1
            for error in errors(doc):
                problems.append(f"{name} {doc['kind']}: refused: {getattr(error, 'message', error)}")
    for name in sorted(os.listdir(bad_dir)):
        path = os.path.join(bad_dir, name)
        with open(path) as f:
            expect = f.readline().removeprefix("# expect:").strip()
        for doc in load(path):
            checked += 1
            paths = [field_path(e) for e in errors(doc) if not isinstance(e, str)]
            if not any(p.startswith(expect) for p in paths):
                problems.append(f"{name}: expected a refusal at {expect}, got {paths or 'none'}")
    if problems:
        sys.exit("\n".join(problems))
    print(f"{checked} resources checked")


def monitoring(rendered, rules_out):
    """Writes the rendered PrometheusRule's groups as a rules file (for promtool) and checks
    that the dashboard ConfigMap holds a Grafana dashboard whose panels all have queries."""
    docs = load(rendered)
    rule = find(docs, "PrometheusRule")
    dashboard = find(docs, "ConfigMap", "weft-grafana-dashboard")
    if rule is None or dashboard is None:
        sys.exit("the rendering has no PrometheusRule or no dashboard ConfigMap")
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, f, sort_keys=False)
    board = json.loads(dashboard["data"]["weft.json"])
    graphs = [p for p in board["panels"] if p["type"] != "row"]
    empty = [p["title"] for p in graphs if not all(t.get("expr") for t in p.get("targets", []))]
    if not graphs or empty:
        sys.exit(f"dashboard panels without queries: {empty or 'no panels'}")
    print(f"{sum(len(g['rules']) for g in rule['spec']['groups'])} rules, {len(graphs)} panels")


def main():
    command, *args = sys.argv[1:]
    {
        "split": split,
        "run-pki": run_pki,
        "same": same,
        "resources": resources,
        "monitoring": monitoring,
    }[command](*args)


if __name__ == "__main__":
    main()
