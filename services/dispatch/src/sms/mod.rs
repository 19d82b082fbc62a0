//! The SMS gateway: templates, the vendor client, the sender and the receipts webhook.

pub mod receipts;
pub mod sending;
pub mod templates;
pub mod vendor;
