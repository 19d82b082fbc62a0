//! The SMS templates the vendor approved, by key, and what each is: a marketing
//! reminder (counts against the frequency cap, never sent to a number that opted out)
//! or a transactional notice (sent regardless). The template decides, not the plan or
//! the command that names it, so no plan can turn a reminder into something that
//! ignores an opt-out. Dispatch holds the codes and texts (`sms/templates.rs`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Marketing,
    Transactional,
}

pub const CATALOG: &[(&str, Kind)] = &[
    ("renewal_friendly", Kind::Marketing),
    ("renewal_campaign", Kind::Marketing),
    ("renewal_urgent", Kind::Marketing),
    ("lapse_rescue", Kind::Marketing),
    ("renewal_confirmed", Kind::Transactional),
];

/// The kind of a template; `None` for a key the vendor never approved.
pub fn kind(key: &str) -> Option<Kind> {
    CATALOG
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind)
}

/// Whether an SMS of this template is marketing. An unknown template counts as
/// marketing: nothing unknown goes to a number that opted out.
pub fn is_marketing(key: &str) -> bool {
    kind(key) != Some(Kind::Transactional)
}
