"""The checks deploy/k8s/validate runs in Python (inside its virtualenv).

    validate.py split OUT_DIR NAME=FILE...   sort rendered documents: built-in kinds go to
                                             OUT_DIR/NAME.builtin.yaml for kubernetes-validate,
                                             custom resources are listed for the next steps
    validate.py custom NAME=FILE...          custom resources: the Prometheus operator's kinds
                                             against its published models, CloudNativePG's
                                             listed as skipped (no offline schema)
    validate.py wiring REPO DEV PROD OBS     the manifests against what the Rust code reads,
                                             serves and exports (the four services and the
                                             console), and deploy/Dockerfile builds

Each check prints `ok` or `FAIL` with the reason; the exit status is 1 if any failed.
"""

import ipaddress
import json
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

SERVICES = ["lists", "assignment", "scheduler", "dispatch"]
# The console (services/console): web pages that call the four services' APIs with the
# signed-in person's token; no database, no NATS, no migrations.
CONSOLE = "console"
WORKLOADS = SERVICES + [CONSOLE]

# Custom resources and what validates them. Anything else must be a kind that
# kubernetes-validate knows, or it is an error (a typo such as apps/v2 would otherwise
# pass with a mere warning).
PROMETHEUS_OPERATOR = "monitoring.coreos.com"
CLOUDNATIVE_PG = "postgresql.cnpg.io"
CUSTOM_GROUPS = {PROMETHEUS_OPERATOR, CLOUDNATIVE_PG}

failures = 0
passes = 0


def ok(what):
    global passes
    passes += 1
    print(f"  ok    {what}")


def fail(what, why):
    global failures
    failures += 1
    print(f"  FAIL  {what}: {why}")


def check(cond, what, why=""):
    if cond:
        ok(what)
    else:
        fail(what, why or "not so")
    return cond


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def group_of(doc):
    api = doc.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def kn(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------- split


def split(out_dir, sources):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for spec in sources:
        name, path = spec.split("=", 1)
        docs = load_all(path)
        builtin = [d for d in docs if group_of(d) not in CUSTOM_GROUPS]
        custom = [d for d in docs if group_of(d) in CUSTOM_GROUPS]
        for d in docs:
            if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
                fail(f"{name}: document", f"has no apiVersion/kind: {str(d)[:80]}")
        target = out / f"{name}.builtin.yaml"
        target.write_text(yaml.safe_dump_all(builtin, sort_keys=False), encoding="utf-8")
        print(f"{name}: {len(docs)} documents, {len(builtin)} of built-in kinds, "
              f"{len(custom)} custom resources ({', '.join(kn(d) for d in custom) or 'none'})")
    return 0 if failures == 0 else 1


# ---------------------------------------------------------------- custom resources


def unknown_fields(given, kept, path=""):
    """Keys present in the input but dropped by the model: fields the schema lacks."""
    found = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for k, v in given.items():
            p = f"{path}.{k}" if path else k
            if k not in kept:
                found.append(p)
            else:
                found += unknown_fields(v, kept[k], p)
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept)):
            found += unknown_fields(a, b, f"{path}[{i}]")
    return found


def custom(sources):
    from importlib.metadata import version

    from cloudcoil.models.prometheus_operator import v1 as prom

    models = f"cloudcoil-models-prometheus-operator {version('cloudcoil-models-prometheus-operator')}"
    skipped = []
    for spec in sources:
        name, path = spec.split("=", 1)
        for doc in load_all(path):
            g = group_of(doc)
            if g == PROMETHEUS_OPERATOR:
                model = getattr(prom, doc["kind"], None)
                what = f"{name}: {kn(doc)} against the prometheus-operator schema ({models}, strict)"
                if model is None or doc["apiVersion"] != "monitoring.coreos.com/v1":
                    fail(what, f"no model for {doc['apiVersion']} {doc['kind']}")
                    continue
                try:
                    parsed = model.model_validate_json(json.dumps(doc), strict=True)
                except Exception as e:  # pydantic.ValidationError
                    fail(what, " ".join(str(e).split())[:400])
                    continue
                extra = unknown_fields(doc, parsed.model_dump(mode="json", by_alias=True, exclude_unset=True))
                check(not extra, what, f"unknown fields {extra}")
            elif g == CLOUDNATIVE_PG:
                skipped.append(f"{name}: {kn(doc)} ({doc['apiVersion']})")
    for s in skipped:
        print(f"  SKIP  {s}: no schema for CloudNativePG's CRDs is available offline "
              "(none ships in a PyPI, npm or Debian package; crates.io has only Rust types "
              "generated from it); its roles, schemas and Secrets are checked against the "
              "services by the wiring step instead")
    return 0 if failures == 0 else 1


# ---------------------------------------------------------------- what the code says


class Code:
    """Facts read from the Rust sources, so the manifests are checked against them."""

    def __init__(self, repo):
        self.repo = Path(repo)
        self.platform = self.repo / "shared/platform/src"
        self.schema, self.binary, self.env, self.required, self.routes = {}, {}, {}, {}, {}
        self.own_routes = {}
        platform_env = self.env_reads(self.platform)
        platform_routes = self.route_paths(self.platform)
        self.platform_routes = platform_routes
        # The admin listener's routes (ADMIN_ADDR: health, readiness, metrics) and the
        # API listener's (HTTP_ADDR), told apart by the function that builds each router.
        http_rs = (self.platform / "http.rs").read_text(encoding="utf-8")
        self.admin_routes = set(re.findall(r'\.route\(\s*"([^"]+)"', self.fn_body(http_rs, "admin_router")))
        self.api_router_routes = set(re.findall(r'\.route\(\s*"([^"]+)"', self.fn_body(http_rs, "router")))
        self.api_platform_routes = platform_routes - self.admin_routes
        config_rs = (self.platform / "config.rs").read_text(encoding="utf-8")
        self.default_port = {var: int(m.group(1)) if m else None for var in ("HTTP_ADDR", "ADMIN_ADDR")
                             for m in [re.search(rf'"{var}",\s*SocketAddr::from\(\(\[[\d,\s]+\],\s*(\d+)\)\)', config_rs)]}
        identity_rs = (self.platform / "identity.rs").read_text(encoding="utf-8")
        self.identity_required = set(re.findall(r'\.required\(\s*"(AUTH_[A-Z0-9_]+)"', identity_rs))
        self.identity_text = identity_rs
        for s in SERVICES:
            src = self.repo / f"services/{s}/src"
            m = re.search(r'pub const SCHEMA: &str = "(\w+)";', (src / "lib.rs").read_text())
            self.schema[s] = m.group(1) if m else None
            cargo = (self.repo / f"services/{s}/Cargo.toml").read_text()
            m = re.search(r'\[\[bin\]\]\s*name = "([^"]+)"', cargo)
            self.binary[s] = m.group(1) if m else None
            self.env[s] = platform_env | self.env_reads(src)
            self.required[s] = set(re.findall(r'ConfigError::Missing\s*\{\s*var:\s*"([A-Z0-9_]+)"', self.text(src)))
            self.own_routes[s] = self.route_paths(src)
            self.routes[s] = self.api_platform_routes | self.own_routes[s]
        self.migrate_arg = {s: '== Some("migrate")' in (self.repo / f"services/{s}/src/main.rs").read_text()
                            for s in SERVICES}
        # The console: its binary, what it reads (the platform's Settings and identity, and
        # ConsoleConfig::from_env), what it requires (env.required), its routes.
        src = self.repo / "services/console/src"
        console_text = self.text(src)
        cargo = (self.repo / "services/console/Cargo.toml").read_text()
        m = re.search(r'\[\[bin\]\]\s*name = "([^"]+)"', cargo)
        self.binary[CONSOLE] = m.group(1) if m else None
        self.env[CONSOLE] = platform_env | self.env_reads(src)
        self.required[CONSOLE] = set(re.findall(r'\.required(?:::<[^>]*>)?\(\s*"([A-Z][A-Z0-9_]*)"', console_text))
        self.own_routes[CONSOLE] = self.route_paths(src)
        self.routes[CONSOLE] = self.api_platform_routes | self.own_routes[CONSOLE]
        m = re.search(r'pub const BASE: &str = "([^"]+)";', (src / "lib.rs").read_text(encoding="utf-8"))
        self.console_base = m.group(1) if m else None
        # The largest upload the console takes (a policy CSV on its way to lists).
        m = re.search(r"pub const MAX_UPLOAD: usize = ([\d\s*_]+);", console_text)
        self.console_max_upload = None
        if m:
            self.console_max_upload = 1
            for factor in m.group(1).split("*"):
                self.console_max_upload *= int(factor.strip().replace("_", ""))
        # Every package's name (for deploy/Dockerfile's `cargo build -p`).
        self.package = {}
        for w in WORKLOADS:
            m = re.search(r'\[package\]\s*name = "([^"]+)"', (self.repo / f"services/{w}/Cargo.toml").read_text())
            self.package[w] = m.group(1) if m else None
        # The API listener's request timeout (http.rs router, TimeoutLayer): how long an
        # in-flight request may take to end after SIGTERM.
        m = re.search(r"TimeoutLayer::with_status_code\(\s*StatusCode::\w+,\s*Duration::from_secs\((\d+)\)",
                      self.fn_body(http_rs, "router"))
        self.request_timeout = int(m.group(1)) if m else None
        self.metrics = self.metric_calls()
        self.default_plan = (self.repo / "services/scheduler/data/default-plan.json").read_text(encoding="utf-8")

    @staticmethod
    def text(directory):
        return "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(directory).rglob("*.rs")))

    @staticmethod
    def fn_body(text, name):
        """The text of `fn name` up to the next fn (enough to read a router's routes)."""
        m = re.search(rf"\bfn {name}\b(.*?)(?=\n\s*(?:pub(?:\([^)]*\))? )?(?:async )?fn |\Z)", text, re.S)
        return m.group(1) if m else ""

    def env_reads(self, directory):
        t = self.text(directory)
        names = set(re.findall(r'\.(?:or|required|optional|secret|secret_or|duration_or)(?:::<[^>]*>)?\(\s*"([A-Z][A-Z0-9_]*)"', t))
        names |= set(re.findall(r'env::var\(\s*"([A-Z][A-Z0-9_]*)"', t))
        # Helpers that take the environment and a name, e.g. dispatch's
        # webhook_token(env, "SMS_WEBHOOK_TOKEN_PREVIOUS") and networks(env, "TRUSTED_PROXIES").
        names |= set(re.findall(r'\(\s*&?env\s*,\s*"([A-Z][A-Z0-9_]*)"', t))
        return names

    def route_paths(self, directory):
        return set(re.findall(r'\.route\(\s*"([^"]+)"', self.text(directory)))

    def metric_calls(self):
        """name -> (kind, set of label names), from every counter!/histogram!/gauge! call."""
        found = {}
        for root in [self.platform] + [self.repo / f"services/{s}/src" for s in WORKLOADS]:
            t = self.text(root)
            for m in re.finditer(r"\b(counter|histogram|gauge)!\(", t):
                depth, i = 1, m.end()
                while depth and i < len(t):
                    depth += {"(": 1, ")": -1}.get(t[i], 0)
                    i += 1
                args = t[m.end():i - 1]
                name = re.match(r'\s*"([a-z_:][a-z0-9_:]*)"', args)
                if not name:
                    continue
                labels = set(re.findall(r'"([a-z_]+)"\s*=>', args))
                # Labels passed as a slice of pairs, e.g. `let labels = [("route", route), ...];`
                # then `counter!("http_requests_total", &labels)` (shared/platform/src/http.rs).
                for ident in re.findall(r"&\s*([a-z_][a-z0-9_]*)\b", args):
                    defs = list(re.finditer(rf"let {ident}\s*=\s*&?\[(.*?)\];", t[:m.start()], re.S))
                    if defs:
                        labels |= set(re.findall(r'\(\s*"([a-z_]+)"\s*,', defs[-1].group(1)))
                kind, entry = m.group(1), found.setdefault(name.group(1), [m.group(1), set()])
                entry[1] |= labels
        return {k: (v[0], v[1]) for k, v in found.items()}


# Environment read outside our sources: sqlx's Postgres driver takes the password from
# PGPASSWORD when DATABASE_URL carries none (sqlx-postgres PgConnectOptions).
THIRD_PARTY_ENV = {"PGPASSWORD"}

# What a service process needs to know its callers unless AUTH_DEV=on (which no cluster
# may use): shared/platform/src/identity.rs, AuthConfig::from_env. AUTH_ISSUER's absence
# is its "no identity provider" error; the other two are env.required.
AUTH_REQUIRED = ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL")

# Ranges that are never the internet: a 0.0.0.0/0 egress rule must except them, so it
# does not open the rest of the cluster (pods, Services, nodes) or the cloud metadata.
PRIVATE_RANGES = [ipaddress.ip_network(n) for n in
                  ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")]

# Address space that is not the internet: the private ranges above, loopback, and IPv6
# unique-local, link-local and loopback. A proxy dispatch believes (TRUSTED_PROXIES) must be
# in it; a range reaching beyond it is public. Membership is decided by containment, not
# ipaddress's is_global/is_private, whose answers for wide networks (0.0.0.0/0) differ
# between Python versions.
INTERNAL_RANGES = PRIVATE_RANGES + [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128")]


def internal(net):
    """Whether every address of `net` is outside the internet (INTERNAL_RANGES)."""
    return any(net.version == r.version and net.subnet_of(r) for r in INTERNAL_RANGES)


# ingress-nginx's source allow-list annotations (older and newer name).
SOURCE_RANGE_ANNOTATIONS = ("nginx.ingress.kubernetes.io/whitelist-source-range",
                            "nginx.ingress.kubernetes.io/allowlist-source-range")

# Series the dashboard and alerts read that Kubernetes, not the services, provides.
EXTERNAL_SERIES = {
    "up": set(),
    "container_memory_working_set_bytes": {"container"},
    "container_cpu_usage_seconds_total": {"container"},
}
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint"}


# ---------------------------------------------------------------- the manifests


class Render:
    def __init__(self, name, path):
        self.name = name
        self.docs = load_all(path)

    def all(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind, name):
        for d in self.all(kind):
            if d["metadata"]["name"] == name:
                return d
        return None

    def configmap(self, name):
        return self.one("ConfigMap", name)

    def env_of(self, container):
        """Every variable a container gets: name -> value (None for Secrets; a ConfigMap
        key's value for configMapKeyRef)."""
        env = {}
        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                cm = self.configmap(src["configMapRef"]["name"])
                if cm is None:
                    fail(f"{self.name}: envFrom {src['configMapRef']['name']}", "no such ConfigMap in the render")
                    continue
                env.update(cm.get("data", {}))
            if "secretRef" in src:
                fail(f"{self.name}: envFrom secretRef {src['secretRef']['name']}",
                     "whole Secrets as env cannot be checked; reference keys one by one")
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref is not None:
                cm = self.configmap(ref["name"])
                data = (cm or {}).get("data", {})
                if ref["key"] not in data and not ref.get("optional"):
                    fail(f"{self.name}: env {e['name']} from ConfigMap {ref['name']} key {ref['key']}",
                         "no such ConfigMap in the render" if cm is None else "no such key in it")
                env[e["name"]] = data.get(ref["key"])
                continue
            env[e["name"]] = e.get("value") if "value" in e else None
        return env


def addr_port(addr):
    return int(str(addr).rsplit(":", 1)[1])


def cidrs(text):
    """Networks in a comma-separated list (as dispatch parses SMS_WEBHOOK_ALLOW and
    TRUSTED_PROXIES, services/dispatch/src/config.rs `networks`: a CIDR or a bare
    address), and the items that are neither."""
    nets, bad = [], []
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        # Python also takes a netmask (10.0.0.0/255.0.0.0) and an IPv6 zone (fe80::1%eth0);
        # the services' parser (the ipnet crate) takes neither.
        address, _, prefix = item.partition("/")
        if "%" in address or ("/" in item and not re.fullmatch(r"\d{1,3}", prefix)):
            bad.append(item)
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            bad.append(item)
    return nets, bad


def pod_names(selector):
    """The `app.kubernetes.io/name` values a pod selector is pinned to (matchLabels or an
    `In` expression), or None if it admits any name."""
    names = None
    name = (selector.get("matchLabels") or {}).get("app.kubernetes.io/name")
    if name is not None:
        names = {name}
    for e in selector.get("matchExpressions") or []:
        if e.get("key") == "app.kubernetes.io/name" and e.get("operator") == "In":
            names = set(e.get("values", [])) if names is None else names & set(e.get("values", []))
    return names


def peer_names(peer):
    """Who a NetworkPolicy peer is (what the checks compare): a namespace by name, renewal
    pods of this namespace by their `app.kubernetes.io/name` (`pod console`), or an ipBlock."""
    if "ipBlock" in peer:
        return {f"ipBlock {peer['ipBlock'].get('cidr')}"}
    if "namespaceSelector" in peer:
        return {peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name", "(some namespaces)")}
    names = pod_names(peer.get("podSelector") or {})
    return {f"pod {n}" for n in names} if names is not None else {"(same namespace)"}


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels and matchExpressions) selects `labels`."""
    selector = selector or {}
    if not labels_match(selector.get("matchLabels"), labels):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def size_bytes(q):
    """ingress-nginx's size notation (proxy-body-size: 64m, 1m, 64k; 0 = no limit)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", str(q).strip())
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]


def duration_seconds(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        return None
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def memory_bytes(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(q))
    return int(m.group(1)) * {"Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, None: 1}[m.group(2)] if m else None


def secrets_created(example):
    """Secret name -> keys, as deploy/k8s/secrets.example creates them."""
    text = example.read_text(encoding="utf-8")
    loops = dict(re.findall(r"for (\w+) in ([a-z ]+); do", text))
    created = {}
    statements = re.split(r"(?<!\\)\n", text)
    for st in statements:
        m = re.search(r'create secret (?:generic|tls) "?([\w$-]+)"?', st)
        if not m:
            continue
        names = [m.group(1)]
        for var, values in loops.items():
            if f"${var}" in m.group(1):
                names = [m.group(1).replace(f"${var}", v) for v in values.split()]
        keys = set(re.findall(r"--from-literal=([A-Za-z0-9_]+)=", st))
        for n in names:
            created[n] = keys
    return created


def ingress_matches(path_spec, request_path):
    path, kind = path_spec["path"], path_spec["pathType"]
    if kind == "Exact":
        return request_path == path
    elements = [e for e in path.split("/") if e]
    return [e for e in request_path.split("/") if e][: len(elements)] == elements


def promql_selectors(expr):
    """(metric, set of label names used) for every `metric{...}` selector, plus the
    labels of every `by (...)` clause (attributed to every metric in the expression)."""
    found = []
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        found.append((m.group(1), labels))
    by = set()
    for m in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
        by |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return found, by


def check_promql(code, where, expr):
    selectors, by = promql_selectors(expr)
    if not selectors:
        fail(where, f"no metric selector with braces in {expr!r}")
        return
    for metric, labels in selectors:
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        if metric in code.metrics:
            known = code.metrics[metric][1]
        elif base in code.metrics and code.metrics[base][0] == "histogram":
            known = code.metrics[base][1] | ({"le"} if metric.endswith("_bucket") else set())
        elif metric in EXTERNAL_SERIES:
            known = EXTERNAL_SERIES[metric]
        else:
            fail(where, f"{metric} is exported by no service (no counter!/histogram!/gauge! of that name)")
            continue
        unknown = (labels | by) - known - TARGET_LABELS - ({"le"} if metric.endswith("_bucket") else set())
        if unknown and metric not in EXTERNAL_SERIES:
            fail(where, f"{metric} has no label {sorted(unknown)} (it has {sorted(known)})")
            continue
        ok(f"{where}: {metric}")


def wiring(repo, dev_path, prod_path, obs_path):
    repo = Path(repo)
    k8s = repo / "deploy/k8s"
    code = Code(repo)
    renders = [Render("dev", dev_path), Render("prod", prod_path)]
    obs = Render("observability", obs_path)
    cluster = load_all(k8s / "postgres/cluster.yaml")[0]
    secrets = secrets_created(k8s / "secrets.example")
    secrets_text = (k8s / "secrets.example").read_text(encoding="utf-8")
    nats = yaml.safe_load((k8s / "nats/values.yaml").read_text(encoding="utf-8"))

    print("code:")
    for s in SERVICES:
        check(code.schema[s] == s, f"{s}: owns the schema `{s}` (SCHEMA in services/{s}/src/lib.rs)",
              f"SCHEMA is {code.schema[s]!r}; roles and DATABASE_URL users assume the service's name")
        check(code.binary[s] == f"renewal-{s}", f"{s}: binary renewal-{s}", f"[[bin]] is {code.binary[s]!r}")
        check(code.migrate_arg[s], f"{s}: main.rs takes `migrate`")
    check(code.binary[CONSOLE] == "renewal-console", "console: binary renewal-console", f"[[bin]] is {code.binary[CONSOLE]!r}")
    check(code.console_base == "/console", "console: mounted under /console (BASE in services/console/src/lib.rs)",
          f"BASE is {code.console_base!r}; the Ingress and CONSOLE_PUBLIC_URL's redirect assume /console")
    for var in ("CONSOLE_LISTS_URL", "CONSOLE_ASSIGNMENT_URL", "CONSOLE_SCHEDULER_URL", "CONSOLE_DISPATCH_URL", "CONSOLE_PUBLIC_URL",
                "CONSOLE_OIDC_AUTHORIZE_URL", "CONSOLE_OIDC_TOKEN_URL", "CONSOLE_OIDC_CLIENT_ID", "CONSOLE_OIDC_CLIENT_SECRET"):
        check(var in code.env[CONSOLE], f"console reads {var} (services/console/src/lib.rs, ConsoleConfig::from_env)")
    check({"CONSOLE_OIDC_AUTHORIZE_URL", "CONSOLE_OIDC_TOKEN_URL"} <= code.required[CONSOLE],
          "console requires CONSOLE_OIDC_AUTHORIZE_URL and CONSOLE_OIDC_TOKEN_URL without AUTH_DEV=on", f"env.required of {sorted(code.required[CONSOLE])}")
    check(code.console_max_upload is not None, f"console: MAX_UPLOAD read ({code.console_max_upload} bytes)")
    check(code.request_timeout is not None, f"platform: the API listener times requests out ({code.request_timeout}s, http.rs router)")
    # The image: every binary a Deployment runs is built and copied by deploy/Dockerfile.
    dockerfile = (repo / "deploy/Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    built = set(re.findall(r"-p\s+([\w-]+)", " ".join(re.findall(r"cargo build[^\n]*", dockerfile))))
    copied = set(" ".join(re.findall(r"for bin in ([\w\s-]+?); do", dockerfile)).split())
    for w in WORKLOADS:
        check(code.package[w] in built and code.binary[w] in copied,
              f"deploy/Dockerfile builds package {code.package[w]} and puts {code.binary[w]} in the image",
              f"built {sorted(built)}, copied {sorted(copied)}")
    for path in ("/healthz", "/readyz", "/metrics"):
        check(path in code.admin_routes, f"platform serves {path} on the admin listener (shared/platform/src/http.rs, admin_router)",
              f"admin_router serves {sorted(code.admin_routes)}")
        on_api = [w for w, routes in [("http.rs router", code.api_router_routes)] + [(f"services/{s}", code.own_routes[s]) for s in WORKLOADS]
                  if path in routes]
        check(not on_api, f"{path} is not served on the API listener (HTTP_ADDR)", f"routed by {on_api}")
    for var in ("HTTP_ADDR", "ADMIN_ADDR"):
        check(code.default_port[var] is not None and all(var in code.env[s] for s in WORKLOADS),
              f"platform reads {var} (default port {code.default_port[var]}, shared/platform/src/config.rs)")
    check(code.default_port["HTTP_ADDR"] != code.default_port["ADMIN_ADDR"], "API and admin listeners default to different ports")
    for var in ("SMS_WEBHOOK_ALLOW", "TRUSTED_PROXIES"):
        check(var in code.env["dispatch"], f"dispatch reads {var} (services/dispatch/src/config.rs)")
    for var in AUTH_REQUIRED + ("AUTH_LEEWAY", "AUTH_DEV", "RENEWAL_ENV"):
        check(all(var in code.env[s] for s in WORKLOADS), f"platform reads {var} (every service and the console; shared/platform/src/identity.rs)")
    check({"AUTH_AUDIENCE", "AUTH_JWKS_URL"} <= code.identity_required and re.search(r'var:\s*"AUTH_ISSUER"', code.identity_text),
          f"identity.rs requires {', '.join(AUTH_REQUIRED)} without AUTH_DEV=on", f"env.required of {sorted(code.identity_required)}")

    roles = {r["name"]: r for r in cluster["spec"]["managed"]["roles"]}
    database = cluster["spec"]["bootstrap"]["initdb"]["database"]
    post_init = " ; ".join(cluster["spec"]["bootstrap"]["initdb"].get("postInitApplicationSQL", []))
    pg_host = f"{cluster['metadata']['name']}-rw"
    # The CA CloudNativePG makes for the cluster (it signs the server certificates).
    pg_ca = f"{cluster['metadata']['name']}-ca"

    for r in renders:
        print(f"{r.name} overlay:")
        deployments = {d["metadata"]["name"]: d for d in r.all("Deployment")}
        check(set(deployments) == set(WORKLOADS), f"{r.name}: one Deployment per service, and the console's", f"found {sorted(deployments)}")
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in r.all("HorizontalPodAutoscaler")}
        for s, d in sorted(deployments.items()):
            pod = d["spec"]["template"]["spec"]
            pod_labels = d["spec"]["template"]["metadata"]["labels"]
            main = next((c for c in pod["containers"] if c["name"] == s), None)
            init = next((c for c in pod.get("initContainers", []) if c["name"] == "migrate"), None)
            if not check(main is not None, f"{r.name}/{s}: container named {s}"):
                continue
            check(main.get("command") == [code.binary[s]], f"{r.name}/{s}: runs {code.binary[s]}", f"command {main.get('command')}")
            if s == CONSOLE:
                check(not pod.get("initContainers"), f"{r.name}/{s}: no initContainer (no database, nothing to migrate)",
                      f"{[c['name'] for c in pod.get('initContainers', [])]}")
            elif check(init is not None, f"{r.name}/{s}: migration initContainer"):
                check(init.get("command") == [code.binary[s], "migrate"], f"{r.name}/{s}: initContainer runs `{code.binary[s]} migrate`",
                      f"command {init.get('command')}")
                check(init.get("image") == main.get("image"), f"{r.name}/{s}: initContainer uses the service's image")
            # Environment: only what the code reads, and what it requires.
            for c in [main] + ([init] if init else []):
                env = r.env_of(c)
                unknown = set(env) - code.env[s] - THIRD_PARTY_ENV
                check(not unknown, f"{r.name}/{s}/{c['name']}: every variable is one the {s} binary reads",
                      f"{sorted(unknown)} are read by nothing in shared/platform or services/{s}")
            env = r.env_of(main)
            # An empty value is no value: the code reads it as unset (config.rs Env::raw).
            missing = {v for v in code.required[s] if v not in env or env[v] == ""}
            check(not missing, f"{r.name}/{s}: required variables set ({', '.join(sorted(code.required[s])) or 'none'})", f"missing or empty {sorted(missing)}")
            # Identity: the insurer's provider, never the development issuer.
            missing = [v for v in AUTH_REQUIRED if v not in env or env[v] == ""]
            check(not missing, f"{r.name}/{s}: {', '.join(AUTH_REQUIRED)} set (the identity provider; the service refuses to start without them)",
                  f"missing or empty {missing}")
            for var in ("AUTH_ISSUER", "AUTH_JWKS_URL"):
                u = urlparse(env.get(var) or "")
                check(u.scheme == "https" and bool(u.hostname), f"{r.name}/{s}: {var} is an https URL ({env.get(var)})")
            issuer, jwks = urlparse(env.get("AUTH_ISSUER") or ""), urlparse(env.get("AUTH_JWKS_URL") or "")
            if issuer.hostname and jwks.hostname and issuer.hostname != jwks.hostname:
                print(f"  NOTE  {r.name}/{s}: AUTH_JWKS_URL's host {jwks.hostname} is not the issuer's ({issuer.hostname}); "
                      "the egress NetworkPolicy must admit it")
            for c in [main] + ([init] if init else []):
                dev = r.env_of(c).get("AUTH_DEV")
                if r.name == "prod":
                    check("AUTH_DEV" not in r.env_of(c), f"prod/{s}/{c['name']}: AUTH_DEV not set", f"AUTH_DEV={dev!r}")
                else:
                    check(dev in (None, "", "off"), f"{r.name}/{s}/{c['name']}: AUTH_DEV off (the development issuer is for a laptop)", f"AUTH_DEV={dev!r}")
            if r.name == "prod":
                check(env.get("RENEWAL_ENV") == "production", f"prod/{s}: RENEWAL_ENV=production (refuses development settings)",
                      f"RENEWAL_ENV={env.get('RENEWAL_ENV')!r}")
            if env.get("AUTH_LEEWAY"):
                leeway = duration_seconds(env["AUTH_LEEWAY"])
                check(leeway is not None and leeway <= 300, f"{r.name}/{s}: AUTH_LEEWAY {env['AUTH_LEEWAY']} is a duration of 5 minutes or less")
            # Port, probes, drain.
            ports = {p.get("name"): p["containerPort"] for p in main.get("ports", [])}
            http_addr = env.get("HTTP_ADDR") or f"0.0.0.0:{code.default_port['HTTP_ADDR']}"
            admin_addr = env.get("ADMIN_ADDR") or f"0.0.0.0:{code.default_port['ADMIN_ADDR']}"
            check(ports.get("http") == addr_port(http_addr), f"{r.name}/{s}: containerPort http = HTTP_ADDR port ({http_addr})",
                  f"ports {ports}")
            check(ports.get("admin") == addr_port(admin_addr), f"{r.name}/{s}: containerPort admin = ADMIN_ADDR port ({admin_addr})",
                  f"ports {ports}")
            check(addr_port(http_addr) != addr_port(admin_addr), f"{r.name}/{s}: HTTP_ADDR and ADMIN_ADDR on different ports")
            # Probes: on the admin listener, the only one serving /healthz and /readyz.
            for probe, path, needed in (("readinessProbe", "/readyz", True), ("livenessProbe", "/healthz", True),
                                        ("startupProbe", "/healthz", False)):
                if probe not in main and not needed:
                    continue
                get = main.get(probe, {}).get("httpGet", {})
                check(get.get("path") == path and path in code.admin_routes and get.get("port") in ("admin", ports.get("admin")),
                      f"{r.name}/{s}: {probe} GET {path} on the admin port (ADMIN_ADDR)", f"{get}")
            sleep = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            sleep_s = float(sleep[1]) if len(sleep) == 2 and sleep[0] == "sleep" else 0
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            check(sleep_s > 0, f"{r.name}/{s}: preStop sleeps before SIGTERM", f"preStop {sleep}")
            if s == CONSOLE:
                # No consumers to drain: the requests in flight end, each within the API
                # listener's request timeout (http.rs router).
                timeout = code.request_timeout or 30
                check(tgps > sleep_s + timeout, f"{r.name}/{s}: terminationGracePeriodSeconds {tgps} > preStop {sleep_s:g}s + {timeout}s request timeout",
                      "SIGKILL would cut requests in flight short")
            else:
                grace = duration_seconds(env.get("SHUTDOWN_GRACE") or "20s")
                check(tgps > sleep_s + grace + 5, f"{r.name}/{s}: terminationGracePeriodSeconds {tgps} > preStop {sleep_s:g}s + SHUTDOWN_GRACE {grace:g}s + 5s HTTP drain",
                      "SIGKILL would cut the drain short")
            # Security context.
            psc = pod.get("securityContext", {})
            for c in [main] + ([init] if init else []):
                sc = c.get("securityContext", {})
                check((sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True and sc.get("readOnlyRootFilesystem") is True
                      and sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"]
                      and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                      f"{r.name}/{s}/{c['name']}: non-root, read-only root, no privilege escalation, capabilities dropped, RuntimeDefault seccomp", f"{sc} {psc}")
                res = c.get("resources", {})
                req, lim = res.get("requests", {}), res.get("limits", {})
                check(all(k in req for k in ("cpu", "memory")) and all(k in lim for k in ("cpu", "memory"))
                      and memory_bytes(req["memory"]) <= memory_bytes(lim["memory"]),
                      f"{r.name}/{s}/{c['name']}: requests and limits ({req.get('memory')}/{lim.get('memory')})", f"{res}")
            # Secrets: every reference is created by secrets.example.
            refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"],
                     e["valueFrom"]["secretKeyRef"].get("optional") is True)
                    for c in [main] + ([init] if init else []) for e in c.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})}
            for name, key, optional in sorted(refs):
                if optional:
                    # A key that exists only for a while (a token being rotated out).
                    check(name in secrets and re.search(rf"\b{key}\b", secrets_text),
                          f"{r.name}/{s}: optional Secret key {name}/{key}: the Secret is created and the key documented by secrets.example",
                          f"secrets.example creates {secrets.get(name)}")
                else:
                    check(key in secrets.get(name, set()), f"{r.name}/{s}: Secret {name}/{key} is created by secrets.example",
                          f"secrets.example creates {secrets.get(name)}")
            if s == CONSOLE:
                # No database and no NATS of its own: none of their settings (the
                # platform's parser would also insist on reading NATS_CA's file).
                given = sorted(v for v in env if re.match(r"(DATABASE_|NATS_|PG|PII_)", v))
                check(not given, f"{r.name}/{s}: no database, NATS or PII settings (the console has none of them)", f"given {given}")
                from_secret = {e["name"] for e in main.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
                check("CONSOLE_OIDC_CLIENT_SECRET" in from_secret, f"{r.name}/{s}: CONSOLE_OIDC_CLIENT_SECRET comes from a Secret",
                      "a literal or a ConfigMap would put the client secret in the manifests")
                # The services' APIs, through their Services in this namespace, on the port
                # named http.
                namespace = d["metadata"].get("namespace")
                for target in SERVICES:
                    var = f"CONSOLE_{target.upper()}_URL"
                    value = env.get(var) or env.get("CONSOLE_SERVICES_URL") or ""
                    u = urlparse(value)
                    svc = r.one("Service", target) or {}
                    port = next((p["port"] for p in svc.get("spec", {}).get("ports", []) if p.get("name") == "http"), None)
                    hosts = {target, f"{target}.{namespace}", f"{target}.{namespace}.svc", f"{target}.{namespace}.svc.cluster.local"}
                    check(u.scheme == "http" and u.hostname in hosts and (u.port or 80) == port and u.path in ("", "/"),
                          f"{r.name}/{s}: {var} is the {target} Service's http port ({value})", f"want http://{target}:{port}")
                public = urlparse(env.get("CONSOLE_PUBLIC_URL") or "")
                check(public.scheme == "https" and bool(public.hostname) and public.path in ("", "/"),
                      f"{r.name}/{s}: CONSOLE_PUBLIC_URL is an https origin ({env.get('CONSOLE_PUBLIC_URL')}; the cookies are Secure)")
                for var in ("CONSOLE_OIDC_AUTHORIZE_URL", "CONSOLE_OIDC_TOKEN_URL"):
                    u = urlparse(env.get(var) or "")
                    check(u.scheme == "https" and bool(u.hostname), f"{r.name}/{s}: {var} is an https URL ({env.get(var)})")
                    if u.hostname and issuer.hostname and u.hostname != issuer.hostname:
                        print(f"  NOTE  {r.name}/{s}: {var}'s host {u.hostname} is not the issuer's ({issuer.hostname}); "
                              "the egress NetworkPolicy must admit it")
            else:
                # Postgres: the service's own role, schema and database.
                url = urlparse(env.get("DATABASE_URL", ""))
                check(url.username == code.schema[s] and url.password is None and url.hostname == pg_host and url.path == f"/{database}",
                      f"{r.name}/{s}: DATABASE_URL is role {s} at {pg_host}/{database}, no password in it", f"{url.geturl()}")
                # Over TLS, verified against CloudNativePG's CA, mounted where sslrootcert says
                # in every container that connects (the service and its migrate step).
                query = parse_qs(url.query)
                root = query.get("sslrootcert", [""])[-1]
                check(query.get("sslmode") == ["verify-full"] and root.startswith("/"),
                      f"{r.name}/{s}: DATABASE_URL says sslmode=verify-full with an sslrootcert file", f"{url.query}")
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                for c in [main] + ([init] if init else []):
                    mount = next((m for m in c.get("volumeMounts", [])
                                  if root.startswith(m["mountPath"].rstrip("/") + "/")), None)
                    secret = volumes.get(mount["name"], {}).get("secret", {}) if mount else {}
                    items = {i["key"]: i["path"] for i in secret.get("items", [])}
                    rel = root[len(mount["mountPath"].rstrip("/")) + 1:] if mount else None
                    check(mount is not None and secret.get("secretName") == pg_ca and items.get("ca.crt") == rel
                          and set(items) == {"ca.crt"},
                          f"{r.name}/{s}/{c['name']}: {root} is key ca.crt of Secret {pg_ca} (CloudNativePG's CA; not its key)",
                          f"mount {mount}, volume {secret}")
                # NATS: over TLS verified against the CA in renewal-nats-ca (mounted where NATS_CA
                # says, in every container: the settings are parsed by migrate too), as the
                # service's own user (README "In transit").
                nats_ca = env.get("NATS_CA") or ""
                check(nats_ca.startswith("/") and (env.get("NATS_URL") or "").startswith("tls://"),
                      f"{r.name}/{s}: NATS_URL is tls:// and NATS_CA names a CA file", f"NATS_URL={env.get('NATS_URL')!r} NATS_CA={nats_ca!r}")
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                for c in [main] + ([init] if init else []):
                    mount = next((m for m in c.get("volumeMounts", [])
                                  if nats_ca.startswith(m["mountPath"].rstrip("/") + "/")), None)
                    secret = volumes.get(mount["name"], {}).get("secret", {}) if mount else {}
                    items = {i["key"]: i["path"] for i in secret.get("items", [])}
                    rel = nats_ca[len(mount["mountPath"].rstrip("/")) + 1:] if mount else None
                    check(mount is not None and secret.get("secretName") == "renewal-nats-ca" and items == {"ca.crt": rel},
                          f"{r.name}/{s}/{c['name']}: NATS_CA {nats_ca} is key ca.crt of Secret renewal-nats-ca",
                          f"mount {mount}, volume {secret}")
                nats_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main.get("env", [])
                             if e["name"] in ("NATS_USER", "NATS_PASSWORD") and "secretKeyRef" in e.get("valueFrom", {})}
                check(all(nats_refs.get(v, {}).get("name") == f"renewal-nats-{s}" and nats_refs[v].get("key") == v
                          for v in ("NATS_USER", "NATS_PASSWORD")),
                      f"{r.name}/{s}: NATS_USER and NATS_PASSWORD from Secret renewal-nats-{s} (its own user)", f"{nats_refs}")
                pgpass = next((e["valueFrom"]["secretKeyRef"] for e in main.get("env", []) if e["name"] == "PGPASSWORD"), {})
                role = roles.get(code.schema[s], {})
                check(pgpass.get("name") == role.get("passwordSecret", {}).get("name") and pgpass.get("key") == "password",
                      f"{r.name}/{s}: PGPASSWORD is the Postgres role's own Secret ({role.get('passwordSecret', {}).get('name')})", f"{pgpass}")
            # Service, disruption budget, autoscaler.
            svc = r.one("Service", s)
            if check(svc is not None, f"{r.name}/{s}: Service"):
                check(labels_match(svc["spec"]["selector"], pod_labels) and any(p.get("targetPort") == "http" and p.get("name") == "http" for p in svc["spec"]["ports"]),
                      f"{r.name}/{s}: Service selects the pods, port http -> http")
                check(any(p.get("name") == "admin" and p.get("targetPort") in ("admin", ports.get("admin")) for p in svc["spec"]["ports"]),
                      f"{r.name}/{s}: Service port admin -> the container's admin port (ADMIN_ADDR)", f"ports {svc['spec']['ports']}")
            pdb = r.one("PodDisruptionBudget", s)
            check(pdb is not None and labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels),
                  f"{r.name}/{s}: PodDisruptionBudget selects the pods")
            if s in hpas:
                check("replicas" not in d["spec"], f"{r.name}/{s}: the autoscaler alone sets replicas",
                      "spec.replicas would be reset on every apply")
        # NetworkPolicies: default deny, and who may reach whom on which port.
        policies = r.all("NetworkPolicy")
        for s, d in sorted(deployments.items()):
            pod_labels = d["spec"]["template"]["metadata"]["labels"]
            main = next((c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == s), {})
            ports = {p.get("name"): p["containerPort"] for p in main.get("ports", [])}
            env = r.env_of(main)
            mine = [p for p in policies if selects(p["spec"]["podSelector"], pod_labels)]
            check(any(set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in mine),
                  f"{r.name}/{s}: a default-deny NetworkPolicy selects the pods")
            # Ingress: (peer, container port) for every rule; a rule without ports opens all.
            admitted, portless = set(), []
            for p in mine:
                for rule in p["spec"].get("ingress", []):
                    peers = set().union(*(peer_names(peer) for peer in rule.get("from", []))) or {"(anywhere)"}
                    if not rule.get("ports"):
                        portless.append(p["metadata"]["name"])
                    for port in rule.get("ports", []):
                        number = ports.get(port["port"]) if isinstance(port["port"], str) else port["port"]
                        admitted |= {(peer, number) for peer in peers}
            check(not portless, f"{r.name}/{s}: every ingress rule names its ports", f"rules of {portless} open every port")
            api_from = {peer for peer, port in admitted if port == ports.get("http")}
            # Dispatch's and the console's through the Ingress; the four services' by the
            # console, which calls them with the person's token.
            want_api = ({"ingress-nginx"} if s in ("dispatch", CONSOLE) else set()) | ({f"pod {CONSOLE}"} if s in SERVICES else set())
            check(api_from == want_api, f"{r.name}/{s}: the API port ({ports.get('http')}) is reached by "
                  + " and ".join(("the ingress controller (ingress-nginx)" if w == "ingress-nginx" else f"the {w.split()[1]} pods") for w in sorted(want_api))
                  + " only", f"reached by {sorted(api_from)}")
            admin_from = {peer for peer, port in admitted if port == ports.get("admin")}
            check(admin_from == {"monitoring"}, f"{r.name}/{s}: the admin port ({ports.get('admin')}) is reached by Prometheus (monitoring) only",
                  f"reached by {sorted(admin_from)}")
            others = sorted(f"{peer}:{port}" for peer, port in admitted if port not in (ports.get("http"), ports.get("admin")))
            check(not others, f"{r.name}/{s}: no other port admitted", f"{others}")
            # Egress beyond the cluster: the identity provider (every service) and the SMS
            # vendor (dispatch), each on its URL's port, and never the private ranges.
            outside = {urlparse(env.get("AUTH_JWKS_URL") or "https://x").port or 443}
            if s == "dispatch":
                outside.add(urlparse(env.get("SMS_VENDOR_URL") or "https://x").port or 443)
            if s == CONSOLE:
                # It redeems a sign-in's code at the provider's token endpoint itself (the
                # authorization endpoint is the browser's to reach).
                outside.add(urlparse(env.get("CONSOLE_OIDC_TOKEN_URL") or "https://x").port or 443)
            egress = [rule for p in mine for rule in p["spec"].get("egress", [])]
            public = [(p["metadata"]["name"], rule) for p in mine for rule in p["spec"].get("egress", [])
                      if any("ipBlock" in peer for peer in rule.get("to", []))]
            public_ports = {(pt.get("protocol", "TCP"), pt.get("port")) for _, rule in public for pt in rule.get("ports", [])}
            check(public and all(rule.get("ports") for _, rule in public) and public_ports <= {("TCP", n) for n in outside},
                  f"{r.name}/{s}: egress outside the cluster only on TCP {', '.join(map(str, sorted(outside)))} "
                  f"(the identity provider{' and the SMS vendor' if s == 'dispatch' else ''})", f"ipBlock rules on {sorted(public_ports)}")
            # Egress inside the cluster, by peer: DNS for every pod; Postgres and NATS for
            # the services only; the services' API ports for the console only.
            def reaches(peer_ok, port_ok, protocol="TCP"):
                return any(any(peer_ok(peer) for peer in rule.get("to", []))
                           and any(pt.get("protocol", "TCP") == protocol and port_ok(pt.get("port")) for pt in rule.get("ports", []))
                           for rule in egress)
            check(reaches(lambda peer: "kube-system" in peer_names(peer) and selects(peer.get("podSelector"), {"k8s-app": "kube-dns"}),
                          lambda port: port == 53, "UDP"),
                  f"{r.name}/{s}: egress to cluster DNS (kube-system, UDP 53)")
            in_cluster = [(peer, pt) for rule in egress for peer in rule.get("to", []) if "ipBlock" not in peer for pt in rule.get("ports", [])]
            pg_port, nats_port = 5432, 4222
            to_data = sorted({pt.get("port") for _, pt in in_cluster if pt.get("port") in (pg_port, nats_port)})
            if s == CONSOLE:
                check(not to_data, f"{r.name}/{s}: no egress to Postgres or NATS (the console has neither)", f"egress on {to_data}")
                for target in SERVICES:
                    if target not in deployments:
                        continue
                    target_labels = deployments[target]["spec"]["template"]["metadata"]["labels"]
                    target_main = next((c for c in deployments[target]["spec"]["template"]["spec"]["containers"] if c["name"] == target), {})
                    target_http = next((p["containerPort"] for p in target_main.get("ports", []) if p.get("name") == "http"), None)
                    check(reaches(lambda peer: "podSelector" in peer and "namespaceSelector" not in peer and selects(peer["podSelector"], target_labels),
                                  lambda port: port in (target_http, "http")),
                          f"{r.name}/{s}: egress to the {target} pods' API port ({target_http})")
                allowed = {53, 4318} | {next((p["containerPort"] for c in deployments[t]["spec"]["template"]["spec"]["containers"]
                                               for p in c.get("ports", []) if p.get("name") == "http"), None) for t in SERVICES if t in deployments}
                extra = sorted({str(pt.get("port")) for _, pt in in_cluster if pt.get("port") not in allowed | {"http"}})
                check(not extra, f"{r.name}/{s}: no other egress in the cluster (DNS, the collector, the services' API ports)", f"also on {extra}")
            else:
                check(reaches(lambda peer: "podSelector" in peer and "namespaceSelector" not in peer
                              and selects(peer["podSelector"], {"cnpg.io/cluster": cluster["metadata"]["name"]}),
                              lambda port: port == pg_port),
                      f"{r.name}/{s}: egress to the Postgres pods ({cluster['metadata']['name']}, {pg_port})")
                check(reaches(lambda peer: "nats" in peer_names(peer), lambda port: port == nats_port),
                      f"{r.name}/{s}: egress to NATS (namespace nats, {nats_port})")
            jwks_port = urlparse(env.get("AUTH_JWKS_URL") or "https://x").port or 443
            check(any(any(pt.get("port") == jwks_port and pt.get("protocol", "TCP") == "TCP" for pt in rule.get("ports", []))
                      and rule.get("to") for rule in egress),
                  f"{r.name}/{s}: egress to TCP {jwks_port} for the identity provider's keys (AUTH_JWKS_URL)")
            for policy, rule in public:
                for peer in rule["to"]:
                    block = peer.get("ipBlock")
                    if not block:
                        continue
                    net = ipaddress.ip_network(block["cidr"], strict=False)
                    excepted = [ipaddress.ip_network(e, strict=False) for e in block.get("except", [])]
                    leaks = [str(pr) for pr in PRIVATE_RANGES if pr.version == net.version and pr.overlaps(net) and not any(pr.subnet_of(e) for e in excepted if e.version == pr.version)]
                    check(not leaks, f"{r.name}/{s}: {policy}: ipBlock {block['cidr']} excepts the private ranges", f"opens {leaks}")
        # Ingress: dispatch's public paths and the console's pages, and nothing else.
        ingress_paths = [(ing["metadata"]["name"], p) for ing in r.all("Ingress")
                         for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
        exposed = {"dispatch": code.routes["dispatch"], CONSOLE: code.own_routes[CONSOLE]}
        for name, p in ingress_paths:
            backend = p["backend"]["service"]
            target = backend["name"]
            check(target in exposed and backend["port"].get("name") == "http", f"{r.name}: Ingress {name} {p['path']} goes to {target}:http (dispatch or the console)", f"{backend}")
            concrete = [re.sub(r"\{[^}]+\}", "x1", route) for route in exposed.get(target, ())]
            check(any(ingress_matches(p, c) for c in concrete), f"{r.name}: Ingress path {p['path']} ({p['pathType']}) reaches a {target} route")
            if target == CONSOLE:
                base = code.console_base or "/console"
                check(p["path"] == base or p["path"].startswith(base + "/"), f"{r.name}: Ingress path {p['path']} to the console stays under {base}")
        dispatch_paths = [(n, p) for n, p in ingress_paths if p["backend"]["service"]["name"] == "dispatch"]
        console_paths = [(n, p) for n, p in ingress_paths if p["backend"]["service"]["name"] == CONSOLE]
        for route in sorted(code.admin_routes | {"/.well-known/jwks.json"}):
            check(not any(ingress_matches(p, route) for _, p in ingress_paths), f"{r.name}: no Ingress path reaches {route}")
        # The console: its pages, the sign-in's return and its assets reach it (and only
        # it) on CONSOLE_PUBLIC_URL's host, each browser kept on one pod.
        for route in ("/console/", "/console/signed-in", "/console/assets/{*file}"):
            concrete = re.sub(r"\{[^}]+\}", "x1", route)
            served = any(re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(c)), concrete) for c in code.own_routes[CONSOLE])
            check(served and any(ingress_matches(p, concrete) for _, p in console_paths) and not any(ingress_matches(p, concrete) for _, p in dispatch_paths),
                  f"{r.name}: {route} is served by the console and routed to it by the Ingress")
        console_main = next((c for c in deployments[CONSOLE]["spec"]["template"]["spec"]["containers"] if c["name"] == CONSOLE), {}) \
            if CONSOLE in deployments else {}
        public = urlparse(r.env_of(console_main).get("CONSOLE_PUBLIC_URL") or "") if console_main else urlparse("")
        console_ingresses = [ing for ing in r.all("Ingress") if any(p["backend"]["service"]["name"] == CONSOLE
                                                                    for rule in ing["spec"]["rules"] for p in rule["http"]["paths"])]
        check(console_ingresses, f"{r.name}: an Ingress routes to the console")
        for ing in console_ingresses:
            name = ing["metadata"]["name"]
            annotations = ing["metadata"].get("annotations", {})
            hosts = {rule.get("host") for rule in ing["spec"]["rules"]}
            tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t.get("hosts", [])}
            check(public.hostname in hosts and public.hostname in tls_hosts,
                  f"{r.name}: Ingress {name} serves CONSOLE_PUBLIC_URL's host ({public.hostname}) over TLS, where the sign-in returns",
                  f"hosts {sorted(map(str, hosts))}, TLS hosts {sorted(tls_hosts)}")
            check(annotations.get("nginx.ingress.kubernetes.io/affinity") == "cookie"
                  and annotations.get("nginx.ingress.kubernetes.io/service-upstream", "false") != "true",
                  f"{r.name}: Ingress {name} keeps each browser on one console pod (cookie affinity; the sessions are in the pods' memory)",
                  "without it a person is signed out whenever a request reaches another replica")
            body = annotations.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")  # ingress-nginx's default
            size = size_bytes(body)
            check(size is not None and (size == 0 or size >= (code.console_max_upload or 0)),
                  f"{r.name}: Ingress {name} proxy-body-size {body} takes the console's largest upload (MAX_UPLOAD, {code.console_max_upload} bytes)")
        # The webhook's source allow-list (services/dispatch/src/sms/receipts.rs, guard and
        # source): SMS_WEBHOOK_ALLOW is matched against the TCP peer, or, when the peer is
        # in TRUSTED_PROXIES, against the right-most X-Forwarded-For address that is not.
        # Behind the Ingress the peer is the ingress controller's pod: without
        # TRUSTED_PROXIES a public range there refuses every push.
        dispatch = next((c for c in deployments["dispatch"]["spec"]["template"]["spec"]["containers"] if c["name"] == "dispatch"), None) \
            if "dispatch" in deployments else None
        if dispatch is not None:
            denv = r.env_of(dispatch)
            allow, bad = cidrs(denv.get("SMS_WEBHOOK_ALLOW"))
            check(not bad, f"{r.name}: SMS_WEBHOOK_ALLOW is a list of CIDRs", f"not CIDRs: {bad}")
            proxies, bad = cidrs(denv.get("TRUSTED_PROXIES"))
            check(not bad, f"{r.name}: TRUSTED_PROXIES is a list of CIDRs", f"not CIDRs: {bad}")
            public_proxies = [str(n) for n in proxies if not internal(n)]
            check(not public_proxies, f"{r.name}: TRUSTED_PROXIES names private ranges only ({', '.join(map(str, proxies)) or 'empty'})",
                  f"{public_proxies}: dispatch believes the X-Forwarded-For of any peer in TRUSTED_PROXIES, so a public range "
                  "there lets anyone on the internet forge the source SMS_WEBHOOK_ALLOW checks; name the ingress controller's pod network")
            trusted = bool(proxies) and not bad and not public_proxies
            if any(ingress_matches(p, "/v1/webhooks/sms/x1/report") for _, p in dispatch_paths):
                public = [str(n) for n in allow if not internal(n)]
                if not allow:
                    ok(f"{r.name}: SMS_WEBHOOK_ALLOW empty: pushes through the Ingress are taken from any source (the path token decides)")
                elif trusted:
                    ok(f"{r.name}: SMS_WEBHOOK_ALLOW behind the Ingress is checked against the X-Forwarded-For address "
                       f"the ingress controller adds (TRUSTED_PROXIES {', '.join(map(str, proxies))})")
                else:
                    state = "empty" if not (proxies or bad) else "unusable (above)"
                    check(not public, f"{r.name}: SMS_WEBHOOK_ALLOW names no public range while the Ingress carries the webhook "
                          f"and TRUSTED_PROXIES is {state}",
                          f"{public}: without TRUSTED_PROXIES dispatch compares the TCP peer, which behind the Ingress is the "
                          "ingress controller's pod, so every push would be refused (403); set TRUSTED_PROXIES to the controller's "
                          "pod network (base/settings/dispatch.env), or put the vendor's ranges on the webhook Ingress "
                          "(whitelist-source-range) instead")
            if proxies and not allow:
                print(f"  NOTE  {r.name}: TRUSTED_PROXIES is set but SMS_WEBHOOK_ALLOW is empty: dispatch checks no source, "
                      "so TRUSTED_PROXIES changes nothing")
        for ing in r.all("Ingress"):
            for key in SOURCE_RANGE_ANNOTATIONS:
                value = ing["metadata"].get("annotations", {}).get(key)
                if value is not None:
                    nets, bad = cidrs(value)
                    check(nets and not bad, f"{r.name}: Ingress {ing['metadata']['name']} {key.rsplit('/', 1)[1]} is a list of CIDRs", f"{value!r}")
        for route in ("/v1/webhooks/sms/{token}/report", "/v1/webhooks/sms/{token}/up", "/v1/phone-tasks:lease",
                      "/v1/phone-tasks/{id}:complete", "/openapi.json"):
            concrete = re.sub(r"\{[^}]+\}", "x1", route)
            served = any(re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(c)), concrete) for c in code.routes["dispatch"])
            check(served and any(ingress_matches(p, concrete) for _, p in dispatch_paths), f"{r.name}: {route} is served by dispatch and routed by the Ingress")
        # Plans and settings.
        plans = r.configmap("scheduler-plans")
        check(plans is not None and plans["data"].get("default-plan.json") == code.default_plan,
              f"{r.name}: scheduler-plans holds services/scheduler/data/default-plan.json unchanged")
        shared = r.env_of({"envFrom": [{"configMapRef": {"name": c["metadata"]["name"]}} for c in r.all("ConfigMap")
                                      if c["metadata"]["name"].startswith("renewal-settings")]})
        want = 3 if r.name == "prod" else 1
        check(shared.get("NATS_STREAM_REPLICAS") == str(want), f"{r.name}: NATS_STREAM_REPLICAS={want}", f"is {shared.get('NATS_STREAM_REPLICAS')}")
        if r.name == "prod":
            images = {c["image"] for d in deployments.values() for c in d["spec"]["template"]["spec"]["containers"] + d["spec"]["template"]["spec"].get("initContainers", [])}
            check(all("@sha256:" in i or (":" in i.rsplit("/", 1)[-1] and i.rsplit(":", 1)[1] not in ("latest", "main")) for i in images),
                  f"prod: image pinned ({', '.join(sorted(images))})")
            check(int(shared["NATS_STREAM_REPLICAS"]) <= nats["config"]["cluster"]["replicas"], "prod: stream replicas fit the NATS cluster")
            # Five streams, each bounded, on every node's JetStream volume.
            volume = nats["config"]["jetstream"]["fileStore"]["pvc"]["size"]
            units = {"Gi": 1 << 30, "Mi": 1 << 20, "Ti": 1 << 40}
            volume_bytes = int(volume[:-2]) * units.get(volume[-2:], 1)
            stream_bytes = int(shared.get("NATS_STREAM_MAX_BYTES", 3 << 30))
            check(5 * stream_bytes <= volume_bytes * 0.9,
                  f"prod: 5 streams x NATS_STREAM_MAX_BYTES ({stream_bytes}) fit 90% of the JetStream volume ({volume})")
            # Postgres connections: every pod's pool at the most pods (one surge each).
            # Dispatch keeps DATABASE_RESERVED_CONNECTIONS more for its webhook and sender.
            shared_pool = int(shared.get("DATABASE_MAX_CONNECTIONS", 10))
            total = 0
            for s, d in deployments.items():
                if s not in SERVICES:
                    continue  # the console holds no Postgres connection
                most = hpas[s]["spec"]["maxReplicas"] if s in hpas else d["spec"].get("replicas", 1)
                pool = shared_pool
                if s == "dispatch":
                    own = r.env_of(d["spec"]["template"]["spec"]["containers"][0])
                    reserved = own.get("DATABASE_RESERVED_CONNECTIONS")
                    check(reserved is not None and reserved.isdigit() and int(reserved) >= 2,
                          "prod/dispatch: DATABASE_RESERVED_CONNECTIONS set (connections for the webhook and sender)", f"is {reserved!r}")
                    pool += int(reserved) if reserved and reserved.isdigit() else 0
                need = (most + 1) * pool
                total += need
                limit = roles.get(s, {}).get("connectionLimit", -1)
                check(limit == -1 or limit >= need, f"prod/{s}: role connectionLimit {limit} >= ({most} pods + 1 surge) x {pool}")
            max_conn = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
            check(max_conn > total, f"prod: Postgres max_connections {max_conn} > {total} (all pools at the most pods)")

    print("postgres/cluster.yaml:")
    check(cluster["spec"].get("instances") == 3, "postgres: 3 instances")
    check(set(roles) == {code.schema[s] for s in SERVICES}, "postgres: one managed role per service schema", f"roles {sorted(roles)}")
    hba = [" ".join(line.split()) for line in cluster["spec"]["postgresql"].get("pg_hba", [])]
    check("hostnossl all all all reject" in hba, "postgres: a plain-text connection over the network is refused (pg_hba hostnossl ... reject)",
          f"pg_hba {hba}")
    for s in SERVICES:
        role = roles.get(s, {})
        secret = role.get("passwordSecret", {}).get("name")
        check(role.get("login") is True and role.get("ensure", "present") == "present" and secret in secrets and {"username", "password"} <= secrets[secret],
              f"postgres: role {s} logs in with the password in Secret {secret} (username, password)")
        check(re.search(rf"CREATE ROLE {s}\b", post_init) and re.search(rf"CREATE SCHEMA {code.schema[s]} AUTHORIZATION {s}\b", post_init),
              f"postgres: schema {code.schema[s]} created, owned by role {s}")
        check(re.search(rf"GRANT CONNECT ON DATABASE {database} TO [^;]*\b{s}\b", post_init),
              f"postgres: role {s} may connect to database {database} (its schema exists, so it needs no CREATE there)")

    print("nats/values.yaml:")
    tag = nats["container"]["image"]["tag"]
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", tag)
    check(m and tuple(map(int, m.groups())) >= (2, 12, 3), f"nats: image tag {tag} is 2.12.3 or later")
    check(nats["config"]["cluster"]["enabled"] and nats["config"]["cluster"]["replicas"] == 3, "nats: three-node cluster")
    js = nats["config"]["jetstream"]
    check(js["enabled"] and js["fileStore"]["enabled"] and js["fileStore"]["pvc"]["enabled"], "nats: JetStream on file storage PVCs")
    check(js.get("merge", {}).get("sync_interval") == "always", "nats: sync_interval always")
    check(nats["config"].get("nats", {}).get("tls", {}).get("enabled") is True
          and nats["config"]["nats"]["tls"].get("secretName") == "nats-server-tls",
          "nats: clients over TLS only (certificate from Secret nats-server-tls)")
    js_key = js.get("merge", {}).get("key", "")
    js_env = nats["container"].get("env", {}).get(js_key.strip("<> ").lstrip("$"), {})
    check(js.get("merge", {}).get("cipher") in ("chachapoly", "aes") and js_key.startswith("<< $")
          and js_env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "nats-jetstream-key",
          "nats: JetStream store encrypted, its key from Secret nats-jetstream-key", f"merge {js.get('merge')}, env {js_env}")
    includes = [v for k, v in nats["config"].get("merge", {}).items() if k.endswith("$include")]
    mounts = {m["value"]["mountPath"] for m in nats["container"].get("patch", []) if m.get("path") == "/volumeMounts/-"}
    volumes = {m["value"]["name"]: m["value"].get("secret", {}).get("secretName")
               for m in nats.get("podTemplate", {}).get("patch", []) if m.get("path") == "/spec/volumes/-"}
    check(any(str(Path("/etc/nats-config", i).resolve()).startswith(tuple(mounts)) for i in includes)
          and "nats-auth" in volumes.values() and re.search(r"create secret generic nats-auth\b", secrets_text),
          "nats: users from `renewal nats-config` (auth.conf of Secret nats-auth, mounted and included)",
          f"includes {includes}, mounts {mounts}, volumes {volumes}")
    for name in ("nats-server-tls", "nats-jetstream-key", "renewal-nats-ca"):
        check(re.search(rf"create secret (?:generic|tls) \"?{name}\b", secrets_text),
              f"nats: Secret {name} is created by secrets.example")

    print("observability:")
    monitors = obs.all("ServiceMonitor")
    for r in renders:
        for s in WORKLOADS:
            svc = r.one("Service", s)
            d = r.one("Deployment", s)
            main = next((c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == s), {}) if d else {}
            ports = {p.get("name"): p["containerPort"] for p in main.get("ports", [])}
            admin_addr = r.env_of(main).get("ADMIN_ADDR") or f"0.0.0.0:{code.default_port['ADMIN_ADDR']}"
            # The Service's ports that lead to the container's admin port (= ADMIN_ADDR's).
            admin_ports = {p["name"] for p in (svc["spec"]["ports"] if svc else [])
                           if (ports.get(p.get("targetPort")) if isinstance(p.get("targetPort"), str) else p.get("targetPort")) == addr_port(admin_addr)}
            sm = [m for m in monitors if svc and labels_match(m["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
                  and svc["metadata"]["namespace"] in m["spec"]["namespaceSelector"]["matchNames"]]
            check(sm and all(e["port"] in admin_ports and e["path"] == "/metrics" and e["path"] in code.admin_routes
                             for m in sm for e in m["spec"]["endpoints"]),
                  f"{r.name}/{s}: the ServiceMonitor scrapes /metrics on the Service's admin port (-> ADMIN_ADDR {admin_addr})",
                  f"endpoints {[(e['port'], e['path']) for m in sm for e in m['spec']['endpoints']]}, admin ports {sorted(admin_ports)}")
    dash_cm = obs.configmap("renewal-dashboard")
    dash = json.loads(next(iter(dash_cm["data"].values())))
    for p in dash["panels"]:
        for t in p.get("targets", []):
            check_promql(code, f"dashboard '{p['title']}'", t["expr"])
    for rule_group in obs.all("PrometheusRule")[0]["spec"]["groups"]:
        for rule in rule_group["rules"]:
            check_promql(code, f"alert {rule['alert']}", rule["expr"])
            if rule["alert"] == "RenewalServiceDown":
                m = re.search(r'service=~"([^"]+)"', rule["expr"])
                watched = set(m.group(1).split("|")) if m else set()
                check(set(WORKLOADS) <= watched, f"alert RenewalServiceDown watches {', '.join(WORKLOADS)}", f"watches {sorted(watched)}")
    exported = set(code.metrics)
    shown = {re.sub(r"_(bucket|sum|count)$", "", m) for p in dash["panels"] for t in p.get("targets", [])
             for m, _ in promql_selectors(t["expr"])[0]}
    if exported <= shown:
        ok("dashboard: shows every metric the services export")
    else:
        # A new metric is no error; a panel for it is still wanted.
        print(f"  NOTE  dashboard: no panel yet for {sorted(exported - shown)}")
    return 0 if failures == 0 else 1


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "split":
        rc = split(args[0], args[1:])
    elif cmd == "custom":
        rc = custom(args)
    elif cmd == "wiring":
        rc = wiring(*args)
    else:
        raise SystemExit(f"unknown command {cmd}")
    if cmd != "split":
        print(f"{cmd}: {passes} passed, {failures} failed")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
