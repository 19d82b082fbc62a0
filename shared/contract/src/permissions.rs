//! Who may publish and read what on NATS, generated from the contract's table
//! (`proto/SUBJECTS.md`, compiled in): nothing here is kept by hand a second time.
//!
//! Each principal (the four services, and the core policy system the demo plays) gets:
//!
//! - **publish**: the subjects whose `producer` cell names it, with the deployment prefix
//!   applied as [`Subjects`] applies it (a `{a,b}.x` row expands to one subject per
//!   namespace, each produced and read by that namespace's service where the row lists
//!   several; "every service" is each namespace's own);
//! - **its durable consumers**: for each `consumers` entry `service (`durable`)`, on the
//!   row's stream: `$JS.API.CONSUMER.INFO.<S>.<durable>`, `$JS.API.CONSUMER.MSG.NEXT.<S>.
//!   <durable>` (pulls) and `$JS.ACK.<S>.<durable>.>` (acks, naks, terms; also the newer
//!   `$JS.ACK.<domain>.<account>.<S>.<durable>.>` form), and
//!   `$JS.API.CONSUMER.CREATE.<S>.<durable>.<filter>` where the filter is a subject the
//!   durable reads, or `<namespace>.<entity>.>` when every subject of that entity is one
//!   the service reads (under any of its durables) or one no durable reads (`lists.case.>`
//!   for the assignment, the scheduler and dispatch; `lists.list.issued`, which dispatch
//!   does not read, is no filter of dispatch's). The filter is part of the subject since NATS 2.9 and the server checks it
//!   against the consumer's configuration, so a service cannot widen its own consumer to
//!   read another's messages. The legacy `CONSUMER.DURABLE.CREATE` (filter in the body
//!   only) is not allowed;
//! - **replies**: subscribe to `_INBOX_<user>.>` only (the client is told to use that
//!   prefix: [`inbox_prefix`]), so no user reads the replies (and pulled messages) of
//!   another.
//!
//! Beyond the table, because JetStream needs it:
//!
//! - `$JS.API.STREAM.CREATE.<S>` and `$JS.API.STREAM.UPDATE.<S>` for the streams of every
//!   subject the principal produces or reads: each service declares the streams it
//!   publishes into and reads from (`Bus::ensure_stream`, and `Bus::pull_consumer`
//!   through it), with the same bounds, so any of them may start first;
//! - `$JS.API.STREAM.INFO.<S>` for all five streams of the deployment (every process
//!   reports how full each stream is; a stream's configuration and counters, no
//!   message), `$JS.API.STREAM.NAMES` (the outbox asks whether any stream captures a
//!   subject JetStream refused) and `$JS.API.INFO` (the account's limits).
//!
//! Everything else is denied: publishing another service's subject or command, deleting
//! or purging a stream, reading a message by sequence, creating ephemeral consumers,
//! deleting consumers. Operators do that as the one user outside the table, `admin`
//! (publish and subscribe `>`: ops tools, the local test harness and the demo's reset),
//! never as a service's user.

use std::collections::{BTreeMap, BTreeSet};

use crate::subjects::{Stream, Subjects};

/// `proto/SUBJECTS.md`, as compiled into this build.
pub const CONTRACT: &str = include_str!("../../../proto/SUBJECTS.md");

/// Who publishes or reads on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// The insurer's core policy system (the demo plays it).
    Core,
    Lists,
    Assignment,
    Scheduler,
    Dispatch,
}

impl Principal {
    pub const SERVICES: [Principal; 4] = [
        Principal::Lists,
        Principal::Assignment,
        Principal::Scheduler,
        Principal::Dispatch,
    ];

    /// The name it has in the table, and as a NATS user.
    pub fn name(self) -> &'static str {
        match self {
            Principal::Core => "core",
            Principal::Lists => "lists",
            Principal::Assignment => "assignment",
            Principal::Scheduler => "scheduler",
            Principal::Dispatch => "dispatch",
        }
    }

    pub fn service(name: &str) -> Option<Principal> {
        Principal::SERVICES.into_iter().find(|p| p.name() == name)
    }
}

/// One NATS user: a name, and the principals whose rights it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: &'static str,
    pub acts_as: Vec<Principal>,
    /// Publishes and subscribes to anything (`>`): the operators' user, outside the
    /// table ([`ADMIN`]).
    pub everything: bool,
}

/// The operators' user: publish and subscribe `>`, for ops tools (`nats stream edit`,
/// a purge), the local test harness (which makes a subject prefix per test and drops
/// its streams) and the demo's reset. No service connects as it.
pub const ADMIN: &str = "admin";

impl User {
    /// What this user may publish and subscribe to in the deployment of `subjects`.
    pub fn permissions(&self, contract: &Contract, subjects: &Subjects) -> Permissions {
        if self.everything {
            return Permissions {
                publish: vec![">".to_owned()],
                subscribe: vec![">".to_owned()],
            };
        }
        contract.permissions(self.name, &self.acts_as, subjects)
    }

    /// Whether it may publish the core policy system's events.
    pub fn plays_core(&self) -> bool {
        self.everything || self.acts_as.contains(&Principal::Core)
    }
}

/// The users of a deployment: one per service, `renewal` (the all-in-one process runs
/// the four services on one connection, so it has their rights together), `core` and
/// `admin` ([`ADMIN`]).
pub fn users() -> Vec<User> {
    let mut users: Vec<User> = Principal::SERVICES
        .into_iter()
        .map(|p| User {
            name: p.name(),
            acts_as: vec![p],
            everything: false,
        })
        .collect();
    users.push(User {
        name: "renewal",
        acts_as: Principal::SERVICES.to_vec(),
        everything: false,
    });
    users.push(User {
        name: "core",
        acts_as: vec![Principal::Core],
        everything: false,
    });
    users.push(User {
        name: ADMIN,
        acts_as: Vec::new(),
        everything: true,
    });
    users
}

/// The generated user named `name`, if it is one.
pub fn user(name: &str) -> Option<User> {
    users().into_iter().find(|u| u.name == name)
}

/// The inbox prefix a user's client takes (its replies and pulled messages arrive
/// there, and it may subscribe nowhere else).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// Whether `user` can be a NATS user name and a subject token (its inbox prefix).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A durable consumer as the table names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub service: Principal,
    pub durable: String,
}

/// One subject of the table (a `{a,b}` row gives one per namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Without the deployment prefix, e.g. `dispatch.cmd.send_sms`.
    pub subject: String,
    pub stream: Stream,
    pub producers: Vec<Principal>,
    pub readers: Vec<Reader>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("proto/SUBJECTS.md line {line}: {reason}")]
pub struct ContractError {
    pub line: usize,
    pub reason: String,
}

/// The subjects table, parsed.
#[derive(Debug, Clone)]
pub struct Contract {
    routes: Vec<Route>,
}

impl Contract {
    /// The table compiled into this build.
    pub fn shipped() -> Result<Contract, ContractError> {
        Contract::parse(CONTRACT)
    }

    /// Parses the first markdown table whose header starts `| subject | stream |
    /// producer | consumers`.
    pub fn parse(markdown: &str) -> Result<Contract, ContractError> {
        let mut lines = markdown.lines().enumerate();
        let header = lines.by_ref().find(|(_, l)| {
            let cells = cells(l);
            cells.len() >= 4
                && cells[0] == "subject"
                && cells[1] == "stream"
                && cells[2] == "producer"
                && cells[3].starts_with("consumers")
        });
        let Some((header_at, _)) = header else {
            return Err(ContractError {
                line: 0,
                reason: "no table with columns subject | stream | producer | consumers".into(),
            });
        };
        let mut routes = Vec::new();
        for (i, line) in lines {
            let line_no = i + 1;
            if !line.trim_start().starts_with('|') {
                break;
            }
            if i == header_at + 1 {
                continue; // the | --- | row
            }
            let failed = |reason: String| ContractError {
                line: line_no,
                reason,
            };
            let cells = cells(line);
            if cells.len() < 4 {
                return Err(failed(format!(
                    "{} cells, expected at least 4",
                    cells.len()
                )));
            }
            routes.extend(parse_row(&cells).map_err(failed)?);
        }
        if routes.is_empty() {
            return Err(ContractError {
                line: header_at + 1,
                reason: "the table has no rows".into(),
            });
        }
        Ok(Contract { routes })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The rights of a user acting as `acts_as`, in the deployment of `subjects`.
    pub fn permissions(
        &self,
        user: &str,
        acts_as: &[Principal],
        subjects: &Subjects,
    ) -> Permissions {
        let mine = |p: &Principal| acts_as.contains(p);
        let mut publish = BTreeSet::new();
        let mut streams = BTreeSet::new();
        // (stream name, durable) -> the subjects it reads
        let mut durables: BTreeMap<(String, &str), BTreeSet<&str>> = BTreeMap::new();
        for route in &self.routes {
            if route.producers.iter().any(mine) {
                publish.insert(subjects.subject(&route.subject));
                streams.insert(subjects.stream(route.stream));
            }
            for reader in route.readers.iter().filter(|r| mine(&r.service)) {
                durables
                    .entry((subjects.stream(route.stream), reader.durable.as_str()))
                    .or_default()
                    .insert(route.subject.as_str());
                streams.insert(subjects.stream(route.stream));
            }
        }
        publish.insert("$JS.API.INFO".to_owned());
        publish.insert("$JS.API.STREAM.NAMES".to_owned());
        for stream in Stream::ALL {
            publish.insert(format!("$JS.API.STREAM.INFO.{}", subjects.stream(stream)));
        }
        for name in &streams {
            publish.insert(format!("$JS.API.STREAM.CREATE.{name}"));
            publish.insert(format!("$JS.API.STREAM.UPDATE.{name}"));
        }
        for ((name, durable), reads) in &durables {
            publish.insert(format!("$JS.API.CONSUMER.INFO.{name}.{durable}"));
            publish.insert(format!("$JS.API.CONSUMER.MSG.NEXT.{name}.{durable}"));
            publish.insert(format!("$JS.ACK.{name}.{durable}.>"));
            publish.insert(format!("$JS.ACK.*.*.{name}.{durable}.>"));
            let service = self
                .routes
                .iter()
                .flat_map(|r| &r.readers)
                .find(|r| r.durable == *durable && mine(&r.service))
                .map(|r| r.service);
            for filter in self.filters(service, reads) {
                publish.insert(format!(
                    "$JS.API.CONSUMER.CREATE.{name}.{durable}.{}",
                    subjects.subject(&filter)
                ));
            }
        }
        Permissions {
            publish: publish.into_iter().collect(),
            subscribe: vec![format!("{}.>", inbox_prefix(user))],
        }
    }

    /// The filters a durable of `service` may create its consumer with: each subject it
    /// reads, and `<namespace>.<entity>.>` where no other service reads a subject of
    /// that entity.
    fn filters(&self, service: Option<Principal>, reads: &BTreeSet<&str>) -> BTreeSet<String> {
        let mut filters: BTreeSet<String> = reads.iter().map(|s| (*s).to_owned()).collect();
        for subject in reads {
            let Some(entity) = entity_of(subject) else {
                continue;
            };
            let whole = self
                .routes
                .iter()
                .filter(|r| entity_of(&r.subject) == Some(entity))
                .all(|r| {
                    r.readers.is_empty() || r.readers.iter().any(|d| Some(d.service) == service)
                });
            if whole {
                filters.insert(format!("{entity}.>"));
            }
        }
        filters
    }
}

/// What a user may publish and subscribe to (NATS subject patterns); anything else is
/// denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl Permissions {
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| subject_matches(p, subject))
    }

    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.iter().any(|p| subject_matches(p, subject))
    }
}

/// Whether NATS subject `pattern` (with `*` and `>` wildcards) matches `subject`, as the
/// server matches a permission (a literal `>` token in `subject` is matched by `>` only).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut want = pattern.split('.');
    let mut got = subject.split('.');
    loop {
        match (want.next(), got.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(w), Some(g)) if w == g && w != "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// `lists.case` of `lists.case.opened` (subjects of three or more tokens).
fn entity_of(subject: &str) -> Option<&str> {
    let mut dots = subject.match_indices('.').map(|(i, _)| i);
    let _ = dots.next()?;
    let second = dots.next()?;
    Some(&subject[..second])
}

fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let Some(inner) = line.strip_prefix('|') else {
        return Vec::new();
    };
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

fn parse_row(cells: &[String]) -> Result<Vec<Route>, String> {
    let subject = cells[0]
        .strip_prefix('`')
        .and_then(|s| s.strip_suffix('`'))
        .ok_or_else(|| format!("subject {:?} is not in backticks", cells[0]))?;
    let producers = parse_producers(&cells[2])?;
    let readers = parse_readers(&cells[3])?;
    let (alternatives, names) = expand(subject)?;
    let mut routes = Vec::new();
    for (own, name) in alternatives.iter().zip(names) {
        let namespace = name.split('.').next().unwrap_or_default();
        let stream = Stream::ALL
            .into_iter()
            .find(|s| s.namespace() == namespace)
            .ok_or_else(|| format!("{name}: no stream for namespace {namespace:?}"))?;
        let stream_cell = cells[1].trim_matches('`');
        if stream_cell
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_')
            && stream_cell != namespace.to_ascii_uppercase()
        {
            return Err(format!(
                "{name} is in stream {stream_cell}, but its namespace is {namespace}"
            ));
        }
        // In an expanded row, a service named among the alternatives plays its own
        // namespace only (`{a,b}.erasure.done` produced by "a, b": a's by a).
        let other = |p: &Principal| {
            own.as_deref().is_some_and(|own| {
                p.name() != own && alternatives.iter().any(|a| a.as_deref() == Some(p.name()))
            })
        };
        routes.push(Route {
            subject: name,
            stream,
            producers: producers.iter().copied().filter(|p| !other(p)).collect(),
            readers: readers
                .iter()
                .filter(|r| !other(&r.service))
                .cloned()
                .collect(),
        });
    }
    Ok(routes)
}

/// `{a,b}.x.y` -> ([a, b], [a.x.y, b.x.y]); a plain subject -> ([None], [it]).
fn expand(subject: &str) -> Result<(Vec<Option<String>>, Vec<String>), String> {
    let Some(open) = subject.find('{') else {
        return Ok((vec![None], vec![subject.to_owned()]));
    };
    let close = subject[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| format!("{subject}: unclosed {{"))?;
    let (head, tail) = (&subject[..open], &subject[close + 1..]);
    let alternatives: Vec<Option<String>> = subject[open + 1..close]
        .split(',')
        .map(|a| Some(a.trim().to_owned()))
        .collect();
    let names = alternatives
        .iter()
        .flatten()
        .map(|a| format!("{head}{a}{tail}"))
        .collect();
    Ok((alternatives, names))
}

/// "scheduler (the T-5 timer)", "assignment, scheduler, dispatch", "every service",
/// "core policy system (the demo plays it)".
fn parse_producers(cell: &str) -> Result<Vec<Principal>, String> {
    let mut plain = String::new();
    let mut depth = 0usize;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut producers = Vec::new();
    for name in plain.split([',', ';']).flat_map(|p| p.split(" and ")) {
        let name = name.trim();
        match name {
            "" => {}
            "core policy system" => producers.push(Principal::Core),
            "every service" => producers.extend(Principal::SERVICES),
            _ => producers.push(
                Principal::service(name).ok_or_else(|| format!("unknown producer {name:?}"))?,
            ),
        }
    }
    if producers.is_empty() {
        return Err(format!("no producer in {cell:?}"));
    }
    Ok(producers)
}

/// Every `service (`durable`` in the consumers cell.
fn parse_readers(cell: &str) -> Result<Vec<Reader>, String> {
    let mut readers = Vec::new();
    for (at, _) in cell.match_indices("(`") {
        let before = cell[..at].trim_end();
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let service = &before[start..];
        let service = Principal::service(service)
            .ok_or_else(|| format!("durable of unknown service {service:?} in {cell:?}"))?;
        let rest = &cell[at + 2..];
        let durable = &rest[..rest
            .find('`')
            .ok_or_else(|| format!("unclosed ` in {cell:?}"))?];
        if !valid_user(durable) {
            return Err(format!("durable name {durable:?} is not one token"));
        }
        readers.push(Reader {
            service,
            durable: durable.to_owned(),
        });
    }
    Ok(readers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject;

    fn rights(who: Principal) -> Permissions {
        let contract = Contract::shipped().expect("the shipped table parses");
        let subjects = Subjects::new("t1").expect("prefix");
        contract.permissions(who.name(), &[who], &subjects)
    }

    #[test]
    fn the_shipped_table_names_every_subject_constant() {
        let contract = Contract::shipped().expect("the shipped table parses");
        for name in [
            subject::CORE_POLICY_UPSERTED,
            subject::LISTS_CASE_OPENED,
            subject::ASSIGNMENT_CMD_CONFIRM_OWNER,
            subject::DISPATCH_CMD_SEND_SMS,
            subject::DISPATCH_SMS_OPTED_OUT,
            "dispatch.dead_letter.recorded",
        ] {
            assert!(
                contract.routes().iter().any(|r| r.subject == name),
                "{name} is in the table"
            );
        }
    }

    #[test]
    fn a_command_is_published_only_by_its_producer() {
        let send = "t1.dispatch.cmd.send_sms";
        assert!(rights(Principal::Scheduler).may_publish(send));
        assert!(!rights(Principal::Dispatch).may_publish(send));
        assert!(!rights(Principal::Lists).may_publish(send));
        assert!(!rights(Principal::Core).may_publish(send));
        assert!(!rights(Principal::Lists).may_publish("t1.core.policy.upserted"));
        assert!(rights(Principal::Core).may_publish("t1.core.policy.upserted"));
        // Without the prefix, or under another, nothing.
        assert!(!rights(Principal::Scheduler).may_publish("dispatch.cmd.send_sms"));
        assert!(!rights(Principal::Scheduler).may_publish("t2.dispatch.cmd.send_sms"));
    }

    #[test]
    fn each_service_publishes_its_own_dead_letters_only() {
        for who in Principal::SERVICES {
            for other in Principal::SERVICES {
                let subject = format!("t1.{}.dead_letter.recorded", other.name());
                assert_eq!(
                    rights(who).may_publish(&subject),
                    who == other,
                    "{who:?} {subject}"
                );
            }
        }
    }

    #[test]
    fn consumers_are_pinned_to_their_durables_and_filters() {
        let dispatch = rights(Principal::Dispatch);
        assert!(
            dispatch.may_publish("$JS.API.CONSUMER.CREATE.T1_DISPATCH.dispatch.t1.dispatch.cmd.>")
        );
        assert!(
            dispatch.may_publish("$JS.API.CONSUMER.CREATE.T1_LISTS.dispatch.t1.lists.case.closed")
        );
        // The openings (each case's contact) under a durable of their own.
        assert!(dispatch.may_publish(
            "$JS.API.CONSUMER.CREATE.T1_LISTS.dispatch-contacts.t1.lists.case.opened"
        ));
        // Not the lists issued, which dispatch does not read.
        assert!(
            !dispatch.may_publish("$JS.API.CONSUMER.CREATE.T1_LISTS.dispatch.t1.lists.list.issued")
        );
        assert!(!dispatch.may_publish("$JS.API.CONSUMER.CREATE.T1_LISTS.dispatch.t1.lists.>"));
        // Nor another service's durable, nor an ephemeral consumer.
        assert!(
            !dispatch.may_publish("$JS.API.CONSUMER.CREATE.T1_LISTS.assignment.t1.lists.case.>")
        );
        assert!(!dispatch.may_publish("$JS.API.CONSUMER.CREATE.T1_LISTS"));
        assert!(!dispatch.may_publish("$JS.API.CONSUMER.DURABLE.CREATE.T1_LISTS.dispatch"));
        assert!(dispatch.may_publish("$JS.API.CONSUMER.MSG.NEXT.T1_LISTS.dispatch"));
        assert!(dispatch.may_publish("$JS.ACK.T1_LISTS.dispatch.1.2.3.4.5"));
        assert!(!dispatch.may_publish("$JS.ACK.T1_LISTS.assignment.1.2.3.4.5"));
        let assignment = rights(Principal::Assignment);
        assert!(
            assignment.may_publish("$JS.API.CONSUMER.CREATE.T1_LISTS.assignment.t1.lists.case.>")
        );
        assert!(
            assignment.may_publish(
                "$JS.API.CONSUMER.CREATE.T1_LISTS.assignment-lists.t1.lists.list.issued"
            )
        );
        let lists = rights(Principal::Lists);
        assert!(lists.may_publish("$JS.API.CONSUMER.CREATE.T1_CORE.lists.t1.core.policy.>"));
        assert!(lists.may_publish("$JS.API.STREAM.CREATE.T1_CORE"));
        assert!(!dispatch.may_publish("$JS.API.STREAM.CREATE.T1_CORE"));
        assert!(!rights(Principal::Core).may_publish("$JS.API.STREAM.CREATE.T1_DISPATCH"));
    }

    #[test]
    fn nobody_deletes_streams_or_reads_messages_by_sequence() {
        for who in [Principal::Core, Principal::Lists, Principal::Scheduler] {
            let r = rights(who);
            assert!(!r.may_publish("$JS.API.STREAM.DELETE.T1_LISTS"));
            assert!(!r.may_publish("$JS.API.STREAM.PURGE.T1_LISTS"));
            assert!(!r.may_publish("$JS.API.STREAM.MSG.GET.T1_LISTS"));
            assert!(r.may_publish("$JS.API.STREAM.INFO.T1_DISPATCH"));
        }
    }

    #[test]
    fn replies_go_to_the_users_own_inbox() {
        let r = rights(Principal::Lists);
        assert!(r.may_subscribe("_INBOX_lists.abc"));
        assert!(!r.may_subscribe("_INBOX_dispatch.abc"));
        assert!(!r.may_subscribe("_INBOX.abc"));
        assert!(!r.may_subscribe("t1.lists.case.opened"));
    }

    #[test]
    fn the_all_in_one_user_has_the_union() {
        let contract = Contract::shipped().expect("parses");
        let subjects = Subjects::new("").expect("prefix");
        let all = contract.permissions("renewal", &Principal::SERVICES, &subjects);
        for who in Principal::SERVICES {
            let one = contract.permissions(who.name(), &[who], &subjects);
            for p in &one.publish {
                assert!(all.publish.contains(p), "{p}");
            }
        }
        assert!(all.may_publish("dispatch.cmd.send_sms"));
        assert!(!all.may_publish("core.policy.upserted"));
    }

    #[test]
    fn the_users_are_the_services_the_all_in_one_core_and_admin() {
        let names: Vec<&str> = users().iter().map(|u| u.name).collect();
        assert_eq!(
            names,
            [
                "lists",
                "assignment",
                "scheduler",
                "dispatch",
                "renewal",
                "core",
                "admin"
            ]
        );
        let contract = Contract::shipped().expect("parses");
        let subjects = Subjects::new("t1").expect("prefix");
        let admin = user(ADMIN)
            .expect("admin")
            .permissions(&contract, &subjects);
        assert!(admin.may_publish("$JS.API.STREAM.DELETE.T1_LISTS"));
        assert!(admin.may_publish("t2.core.policy.upserted"));
        assert!(admin.may_subscribe("_INBOX_admin.abc"));
        assert!(user(ADMIN).expect("admin").plays_core());
        assert!(user("core").expect("core").plays_core());
        assert!(!user("renewal").expect("renewal").plays_core());
        let renewal = user("renewal")
            .expect("renewal")
            .permissions(&contract, &subjects);
        assert!(!renewal.may_publish("$JS.API.STREAM.DELETE.T1_LISTS"));
        assert!(user("mallory").is_none());
    }

    #[test]
    fn expanded_rows_pair_producers_and_readers_by_namespace() {
        let table = "| subject | stream | producer | consumers (durable) | payload |\n\
                     | --- | --- | --- | --- | --- |\n\
                     | `{lists,dispatch}.x.done` | the service's own | lists, dispatch | scheduler (`s-x`) | P |\n\
                     | `{lists,dispatch}.cmd.y` | the executing service's | scheduler (a timer) | lists (`lists-y`), dispatch (`dispatch-y`) | P |\n";
        let contract = Contract::parse(table).expect("parses");
        let r = |s: &str| {
            contract
                .routes()
                .iter()
                .find(|r| r.subject == s)
                .expect(s)
                .clone()
        };
        assert_eq!(r("lists.x.done").producers, vec![Principal::Lists]);
        assert_eq!(r("dispatch.x.done").stream, Stream::Dispatch);
        assert_eq!(r("dispatch.x.done").readers[0].durable, "s-x");
        assert_eq!(r("dispatch.cmd.y").readers.len(), 1);
        assert_eq!(r("dispatch.cmd.y").readers[0].durable, "dispatch-y");
        assert_eq!(r("lists.cmd.y").producers, vec![Principal::Scheduler]);
    }

    #[test]
    fn a_table_naming_an_unknown_producer_is_refused() {
        let table = "| subject | stream | producer | consumers (durable) |\n| --- | --- | --- | --- |\n\
                     | `lists.a.b` | LISTS | billing | (none) |\n";
        let err = Contract::parse(table).expect_err("unknown producer");
        assert_eq!(err.line, 3);
        let table = "| subject | stream | producer | consumers (durable) |\n| --- | --- | --- | --- |\n\
                     | `lists.a.b` | DISPATCH | lists | (none) |\n";
        assert!(
            Contract::parse(table).is_err(),
            "stream and namespace disagree"
        );
    }

    #[test]
    fn wildcards_match_as_the_server_matches() {
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(subject_matches("a.b.>", "a.b.>"));
        assert!(!subject_matches("a.b.c", "a.b.>"));
        assert!(!subject_matches("a.*", "a.>"));
    }
}
