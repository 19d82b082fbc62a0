//! Paged lists: a list route takes `page_size` (default 100, at most 1000) and
//! `page_token`, and answers `{"items": [...], "next_page_token": "..."}` (the token
//! absent on the last page). A token is the sort key of the page's last item, as
//! base64url JSON: opaque to callers, and stable while items come and go (keyset
//! paging, not offsets).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

pub const DEFAULT_PAGE_SIZE: i64 = 100;
pub const MAX_PAGE_SIZE: i64 = 1000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// A number; a query string's text form is taken too (a list's own query struct
    /// flattens this one in, and flattened fields reach us as text).
    #[serde(default, deserialize_with = "number_or_text")]
    pub page_size: Option<i64>,
    pub page_token: Option<String>,
}

fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("page_size must be a number")),
    }
}

impl PageQuery {
    /// Items per page: as asked, within 1 to 1000.
    pub fn size(&self) -> i64 {
        self.page_size
            .unwrap_or(DEFAULT_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE)
    }

    /// The key to continue after, if this is not the first page.
    pub fn after<K: DeserializeOwned>(&self) -> Result<Option<K>, Problem> {
        let Some(token) = self.page_token.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let bad = || Problem::bad_request("page_token is not one this list gave");
        let json = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        serde_json::from_slice(&json).map(Some).map_err(|_| bad())
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// A page from up to `size + 1` items read in order: the extra one, if read, only
    /// says there is more.
    pub fn of<K: Serialize>(mut items: Vec<T>, size: i64, key: impl Fn(&T) -> K) -> Page<T> {
        let more = items.len() as i64 > size;
        items.truncate(size.max(0) as usize);
        let next_page_token = more
            .then(|| items.last().map(&key))
            .flatten()
            .and_then(|k| serde_json::to_vec(&k).ok())
            .map(|json| URL_SAFE_NO_PAD.encode(json));
        Page {
            items,
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_key_of_a_full_page_continues_the_list() {
        let page = Page::of(vec![1, 2, 3], 2, |n| format!("k{n}"));
        assert_eq!(page.items, vec![1, 2]);
        let query = PageQuery {
            page_size: Some(2),
            page_token: page.next_page_token.clone(),
        };
        assert_eq!(query.after::<String>().expect("ours"), Some("k2".into()));
        let last = Page::of(vec![3], 2, |n| *n);
        assert!(last.next_page_token.is_none());
        let forged = PageQuery {
            page_size: None,
            page_token: Some("!!".into()),
        };
        assert_eq!(forged.after::<String>().expect_err("not ours").status, 400);
        assert_eq!(PageQuery::default().size(), 100);
        // As a query string gives it, flattened into a list's own query.
        #[derive(Deserialize)]
        struct Listing {
            #[allow(dead_code)]
            state: Option<String>,
            #[serde(flatten)]
            page: PageQuery,
        }
        let q: Listing =
            serde_json::from_value(serde_json::json!({"state": "x", "page_size": "5"}))
                .expect("text taken");
        assert_eq!(q.page.size(), 5);
    }
}
