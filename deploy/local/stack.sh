# Sourced by deploy/local/demo and deploy/local/test: makes sure Postgres and NATS with
# JetStream answer on loopback. Uses them when they are up; otherwise starts the
# installed servers, installing `postgresql` and `nats-server` with apt-get where they
# are missing and that is allowed. Says what it did, or what you must do. Then, as
# production runs them: a local CA, Postgres over TLS (ensure_postgres_tls) and, once the
# caller has built the renewal binary, a NATS of its own with TLS and users
# (ensure_nats_tls).

say() { printf '%s\n' "local stack: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}

ensure_postgres() {
  if port_open 5432; then say "Postgres answers on 127.0.0.1:5432; using it"; return 0; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql || {
      say "Postgres is not running and cannot be installed here."
      say "Install PostgreSQL 13+ listening on 127.0.0.1:5432 with user postgres (trust on loopback), or set DATABASE_URL."
      return 1
    }
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then say "postgresql is installed but has no cluster; run: pg_createcluster <version> main"; return 1; fi
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if [ -f "$hba" ] && ! grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    # A development machine: the postgres user connects over loopback without a password.
    as_root sh -c "printf '# renewal: trust loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | cat - '$hba' > '$hba.new' && mv '$hba.new' '$hba' && chown postgres:postgres '$hba'" &&
      say "set $hba to trust loopback connections (development only)"
  fi
  say "starting Postgres $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
    as_root pg_ctlcluster "$version" main start || true
  wait_port 5432 && { say "Postgres is up on 127.0.0.1:5432"; return 0; }
  say "Postgres did not come up on 127.0.0.1:5432; see /var/log/postgresql/"; return 1
}

ensure_nats() {
  if port_open 4222; then say "NATS answers on 127.0.0.1:4222; using it (it must have JetStream enabled: -js)"; return 0; fi
  if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    apt_install nats-server || {
      say "NATS is not running and cannot be installed here."
      say "Install nats-server and run: nats-server -a 127.0.0.1 -p 4222 -js -sd <dir>"
      return 1
    }
  fi
  local bin state
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  state="${RENEWAL_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/renewal}/nats"
  mkdir -p "$state"
  say "starting NATS with JetStream (data in $state, log in $state/nats.log)"
  nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$state" -l "$state/nats.log" >/dev/null 2>&1 &
  wait_port 4222 && { say "NATS is up on 127.0.0.1:4222"; return 0; }
  say "NATS did not come up; see $state/nats.log"; return 1
}

# A local certificate authority and a server certificate for 127.0.0.1 and localhost,
# made once with the openssl command in the state folder ($RENEWAL_TLS_DIR): the local
# Postgres and NATS serve TLS with it, and the services verify it (ca.crt), as they
# verify the cluster's CA in Kubernetes. Development only: the CA key stays beside it.
ensure_local_ca() {
  local dir="${RENEWAL_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/renewal}/tls"
  export RENEWAL_TLS_DIR="$dir"
  if [ -s "$dir/ca.crt" ] && [ -s "$dir/server.crt" ] && [ -s "$dir/server.key" ]; then return 0; fi
  command -v openssl >/dev/null 2>&1 || apt_install openssl || {
    say "openssl is missing and cannot be installed: the local stack runs without TLS"; return 1; }
  mkdir -p "$dir" && chmod 700 "$dir"
  (
    cd "$dir" &&
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=renewal local CA" -keyout ca.key -out ca.crt \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null &&
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext &&
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile server.ext -out server.crt 2>/dev/null &&
      rm -f server.csr server.ext ca.srl && chmod 600 ca.key server.key
  ) || { say "could not make the local CA in $dir"; return 1; }
  say "made a local CA and a server certificate for 127.0.0.1 in $dir"
}

# The local Postgres serves TLS with the local CA's server certificate, and a role
# `renewal` (CREATEDB) may connect only over TLS: the tests connect as it with
# sslmode=verify-full, so a plain-text connection as it is refused. The postgres user
# keeps its plain loopback access (other tools on the machine use it). Done only when
# the local Postgres is ours to configure (its superuser answers on loopback, its files
# are on this machine, and we are root or may sudo); each step only when needed, so a
# second run changes nothing. Exports RENEWAL_POSTGRES_TLS=on, or off when it could not.
ensure_postgres_tls() {
  export RENEWAL_POSTGRES_TLS=off
  local dir="${RENEWAL_TLS_DIR:-}"
  if [ -z "$dir" ] || [ ! -s "$dir/server.crt" ] || [ ! -s "$dir/server.key" ]; then
    say "no local CA: Postgres is used without TLS"; return 0
  fi
  local psql_su=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres -d postgres)
  if ! command -v psql >/dev/null 2>&1 ||
    [ "$("${psql_su[@]}" -c 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user' 2>/dev/null)" != t ]; then
    say "the postgres superuser does not answer on 127.0.0.1:5432: Postgres is used as it is, without TLS"; return 0
  fi
  if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then
    say "not root and no sudo: cannot give Postgres the local certificate; it is used without TLS"; return 0
  fi
  local data hba
  data=$("${psql_su[@]}" -c 'SHOW data_directory') && hba=$("${psql_su[@]}" -c 'SHOW hba_file') || return 0
  if ! as_root test -f "$hba" || ! as_root test -d "$data"; then
    say "Postgres on 127.0.0.1:5432 keeps its files elsewhere (not on this machine?): it is used without TLS"; return 0
  fi
  local owner changed=0
  owner=$(as_root stat -c %U "$data")
  # The certificate and key where the server process can read them, the key 0600.
  local certs
  certs="$(dirname "$data")/renewal-tls"
  as_root install -d -m 0700 -o "$owner" -g "$owner" "$certs" || return 0
  local f mode
  for f in ca.crt server.crt server.key; do
    mode=0644; [ "$f" = server.key ] && mode=0600
    if ! as_root cmp -s "$dir/$f" "$certs/$f"; then
      as_root install -m "$mode" -o "$owner" -g "$owner" "$dir/$f" "$certs/$f" || return 0
      changed=1
    fi
  done
  local name want
  for name in ssl_cert_file:server.crt ssl_key_file:server.key ssl_ca_file:ca.crt ssl:on; do
    want="${name#*:}"; name="${name%%:*}"
    [ "$name" = ssl ] || want="$certs/$want"
    if [ "$("${psql_su[@]}" -c "SHOW $name")" != "$want" ]; then
      "${psql_su[@]}" -c "ALTER SYSTEM SET $name = '$want'" || return 0
      changed=1
    fi
  done
  # The role the tests use, over TLS only (first match wins: these lines go first).
  if [ "$("${psql_su[@]}" -c "SELECT rolcanlogin AND rolcreatedb FROM pg_roles WHERE rolname = 'renewal'")" != t ]; then
    if [ -z "$("${psql_su[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'renewal'")" ]; then
      "${psql_su[@]}" -c 'CREATE ROLE renewal LOGIN CREATEDB' || return 0
    else
      "${psql_su[@]}" -c 'ALTER ROLE renewal LOGIN CREATEDB' || return 0
    fi
    say "made the role renewal (CREATEDB), for TLS connections only"
  fi
  if ! as_root grep -q '^# renewal: the renewal role over TLS only' "$hba"; then
    as_root sh -c "printf '# renewal: the renewal role over TLS only\nhostssl all renewal 127.0.0.1/32 trust\nhostssl all renewal ::1/128 trust\nhostnossl all renewal all reject\nlocal all renewal reject\n' | cat - '$hba' > '$hba.new' && mv '$hba.new' '$hba' && chown $owner:$owner '$hba'" || return 0
    say "set $hba to let the renewal role in over TLS only"
    changed=1
  fi
  if [ "$changed" = 1 ]; then
    "${psql_su[@]}" -c 'SELECT pg_reload_conf()' >/dev/null || return 0
    sleep 0.5
    say "Postgres serves TLS with the local CA's certificate (in $certs); reloaded"
  fi
  if [ -n "$("${psql_su[@]}" -c 'SELECT 1 FROM pg_hba_file_rules WHERE error IS NOT NULL LIMIT 1')" ]; then
    say "$hba has errors (see pg_hba_file_rules): Postgres is used without TLS"; return 0
  fi
  # The proof: a verify-full connection as the renewal role (the server's reload of
  # its certificate fails only in its log).
  if ! PGSSLMODE=verify-full PGSSLROOTCERT="$dir/ca.crt" psql -X -q -At -h 127.0.0.1 -p 5432 -U renewal -d postgres \
    -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>/dev/null | grep -qx t; then
    say "Postgres does not serve TLS with the local CA's certificate (see /var/log/postgresql/): it is used without TLS"; return 0
  fi
  export RENEWAL_POSTGRES_TLS=on
  [ "$changed" = 1 ] || say "Postgres serves TLS with the local CA's certificate; the renewal role connects over TLS only"
}

# A second NATS on 127.0.0.1:4223, as production runs it: TLS only, with the local CA's
# server certificate, and the users `renewal nats-config` generates from
# proto/SUBJECTS.md (one per service, `renewal`, `core`, `admin`; passwords in
# <state>/nats-users, 0600), JetStream in <state>/nats-tls (its log there too). The
# machine's plain server on 4222 stays as it is; the demo and the tests use this one.
#   ensure_nats_tls BINARY [USER]
# BINARY is the renewal binary that generates the users (the caller builds it first);
# USER the one to connect as: `admin` (the default; the tests, which make a subject
# prefix per test and drop their streams) or `renewal` (the demo, under the all-in-one's
# exact rights for the demo's prefix, ${DEMO_NATS_PREFIX:-demo}; NATS_CORE_PASSWORD and
# NATS_ADMIN_PASSWORD are exported beside it for the core policy system it plays and the
# reset of a fresh season). Started once; a second run reuses the running server when
# its configuration is unchanged and restarts it when it changed. Exports NATS_URL,
# NATS_CA, NATS_USER, NATS_PASSWORD and RENEWAL_NATS_TLS=on; when it cannot (no local
# CA, no nats-server, no binary, the server does not come up), says why, leaves NATS_URL
# to the plain server and exports RENEWAL_NATS_TLS=off.
ensure_nats_tls() {
  local renewal="${1:?usage: ensure_nats_tls RENEWAL_BINARY [USER]}" user="${2:-admin}"
  local port=4223 state users news
  state="${RENEWAL_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/renewal}"
  users="$state/nats-users"
  export RENEWAL_NATS_TLS=off
  if ! news=$(nats_tls_start "$renewal" "$port" "$state") ||
    { [ ! -s "$users/$user" ] && news="no password for NATS user $user in $users"; }; then
    say "$news: NATS is used in plain text on 127.0.0.1:4222"
    if [ "${NATS_URL:-}" = "tls://127.0.0.1:$port" ]; then
      unset NATS_URL NATS_CA NATS_USER NATS_PASSWORD NATS_CORE_PASSWORD NATS_ADMIN_PASSWORD
    fi
    return 0
  fi
  say "$news"
  export NATS_URL="tls://127.0.0.1:$port" NATS_CA="$RENEWAL_TLS_DIR/ca.crt" NATS_USER="$user"
  NATS_PASSWORD=$(cat "$users/$user") && export NATS_PASSWORD
  if [ "$user" != admin ]; then
    NATS_CORE_PASSWORD=$(cat "$users/core") && export NATS_CORE_PASSWORD
    NATS_ADMIN_PASSWORD=$(cat "$users/admin") && export NATS_ADMIN_PASSWORD
  fi
  export RENEWAL_NATS_TLS=on
  say "connecting to NATS as $user over TLS (NATS_URL=$NATS_URL, NATS_CA=$NATS_CA)"
}

# Starts (or finds) the TLS server of ensure_nats_tls: prints what it did and succeeds,
# or prints why not and fails.
nats_tls_start() {
  local renewal=$1 port=$2 state=$3
  local dir="${RENEWAL_TLS_DIR:-}"
  if [ -z "$dir" ] || [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/server.crt" ] || [ ! -s "$dir/server.key" ]; then
    echo "no local CA"; return 1
  fi
  local bin
  if command -v nats-server >/dev/null 2>&1; then bin=$(command -v nats-server)
  elif [ -x /usr/sbin/nats-server ]; then bin=/usr/sbin/nats-server
  else echo "no nats-server binary"; return 1
  fi
  [ -x "$renewal" ] || { echo "$renewal is missing (build it first)"; return 1; }
  local store="$state/nats-tls"
  local conf="$store/nats.conf" next="$store/nats.conf.next" pid_file="$store/nats.pid"
  { mkdir -p "$store" && chmod 700 "$store"; } || { echo "cannot make $store"; return 1; }
  # The configuration holds the users' passwords: 0600.
  if ! (
    umask 077
    {
      printf '# Made by deploy/local/stack.sh (ensure_nats_tls) on every run; the server is\n'
      printf '# restarted when it changes.\n'
      printf 'listen: 127.0.0.1:%s\n' "$port"
      printf 'server_name: renewal_local_tls\n'
      printf 'pid_file: "%s"\n' "$pid_file"
      printf 'log_file: "%s"\n' "$store/nats.log"
      # Every test declares five streams of 256 MiB, many tests at once.
      printf 'jetstream {\n  store_dir: "%s"\n  max_file_store: 64GB\n  max_memory_store: 1GB\n}\n' "$store"
      "$renewal" nats-config --prefix "${DEMO_NATS_PREFIX:-demo}" --passwords "$state/nats-users" \
        --tls-cert "$dir/server.crt" --tls-key "$dir/server.key" 2>/dev/null
    } >"$next"
  ); then
    rm -f "$next"; echo "$renewal nats-config failed"; return 1
  fi
  # Ours and running: the pid file names a live nats-server started with this file.
  local pid="" running=0
  [ -s "$pid_file" ] && pid=$(cat "$pid_file" 2>/dev/null || true)
  if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "-c $conf"; then
    running=1
  fi
  local did
  if [ "$running" = 1 ] && port_open "$port" && cmp -s "$conf" "$next"; then
    rm -f "$next"
    did="the TLS NATS on 127.0.0.1:$port runs with this configuration; using it"
  else
    if [ "$running" = 1 ]; then
      did="restarted the TLS NATS on 127.0.0.1:$port (its configuration changed)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do port_open "$port" || break; sleep 0.25; done
    else
      did="started a TLS NATS with JetStream and the generated users on 127.0.0.1:$port"
    fi
    if port_open "$port"; then
      rm -f "$next"; echo "something else listens on 127.0.0.1:$port"; return 1
    fi
    mv -f "$next" "$conf" || { echo "cannot write $conf"; return 1; }
    nohup "$bin" -c "$conf" >/dev/null 2>&1 &
    wait_port "$port" || { echo "the TLS NATS did not come up on 127.0.0.1:$port (see $store/nats.log)"; return 1; }
    did="$did (data and log in $store)"
  fi
  # The proof, where python3 is: a plain-text session is refused, admin logs in over TLS
  # verified against the local CA, and JetStream answers.
  if command -v python3 >/dev/null 2>&1; then
    local failed
    if ! failed=$(NATS_PROOF_PASSWORD="$(cat "$state/nats-users/admin" 2>/dev/null)" \
      python3 - "$port" "$dir/ca.crt" 2>&1 <<'PY'
import json, os, socket, ssl, sys, time
port, ca, password = int(sys.argv[1]), sys.argv[2], os.environ["NATS_PROOF_PASSWORD"]
def session(tls):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    info = sock.makefile("rb").readline()
    if tls:
        context = ssl.create_default_context(cafile=ca)
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    connect = {"verbose": False, "pedantic": False, "tls_required": tls, "user": "admin", "pass": password}
    sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n"
                 + b"SUB _INBOX_admin.proof 1\r\nPUB $JS.API.INFO _INBOX_admin.proof 0\r\n\r\n")
    seen, deadline = b"", time.time() + 5
    while time.time() < deadline and not (b"PONG" in seen and b"MSG " in seen):
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    sock.close()
    return info, seen
info, seen = session(False)
if b'"tls_required":true' not in info or b"PONG" in seen:
    sys.exit("it answers in plain text")
info, seen = session(True)
if b"PONG" not in seen:
    sys.exit("admin cannot log in over TLS: %r" % seen[:200])
if b"account_info_response" not in seen or b'"error"' in seen:
    sys.exit("JetStream does not answer: %r" % seen[:300])
PY
    ); then
      echo "the TLS NATS on 127.0.0.1:$port failed its check (${failed:-python3 failed}; see $store/nats.log)"; return 1
    fi
  fi
  echo "$did"
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 && return 0
  [ -x "$HOME/.cargo/bin/cargo" ] && { export PATH="$HOME/.cargo/bin:$PATH"; return 0; }
  say "cargo is not installed: install Rust 1.95 or later (https://rustup.rs), then run this again."
  return 1
}

# Debian's headless Chromium, its WebDriver and a Chinese font, for the console's
# browser tests (tests/e2e/console.rs); installed with apt-get where missing.
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] &&
    { ! command -v fc-list >/dev/null 2>&1 || fc-list :lang=zh 2>/dev/null | grep -q .; }; then
    return 0
  fi
  apt_install chromium chromium-driver fonts-wqy-zenhei && return 0
  say "the console's browser tests need Debian's chromium, chromium-driver and a Chinese font (fonts-wqy-zenhei): install them, then run this again."
  return 1
}

ensure_stack() {
  ensure_rust && ensure_postgres && ensure_nats || return 1
  ensure_local_ca || true
  ensure_postgres_tls || true
}
