//! The customer categories of the dealer renewal targets (DOMAIN.md, "Customer
//! categories"), with the target renewal rate of each: six categories, targets counted
//! in vehicles. The codes are the ones policies carry in `category` (and the demo
//! portfolio draws from).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Category {
    pub code: &'static str,
    pub description: &'static str,
    /// The target renewal rate, in percent; `None` for the category with no target.
    pub target_percent: Option<u32>,
}

pub const CATEGORIES: &[Category] = &[
    Category {
        code: "insured_last_year",
        description: "insured with us last year",
        target_percent: Some(75),
    },
    Category {
        code: "full_policy_data",
        description: "not insured with us last year, full policy data",
        target_percent: Some(30),
    },
    Category {
        code: "phone_only",
        description: "not insured with us last year, phone number only, no policy data",
        target_percent: Some(20),
    },
    Category {
        code: "local_recent_workshop",
        description: "not insured with us last year, local, back at the workshop within two years",
        target_percent: Some(20),
    },
    Category {
        code: "local_not_back_2y",
        description: "not insured with us last year, local, not back for over two years",
        target_percent: Some(10),
    },
    Category {
        code: "other_city",
        description: "not insured with us last year, other city",
        target_percent: None,
    },
];

pub fn find(code: &str) -> Option<&'static Category> {
    CATEGORIES.iter().find(|c| c.code == code)
}

/// The target renewal rate of a category, in percent; `None` for an unknown code or the
/// category with no target.
pub fn target_percent(code: &str) -> Option<u32> {
    find(code).and_then(|c| c.target_percent)
}

pub fn is_known(code: &str) -> bool {
    find(code).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_domain_table() {
        assert_eq!(target_percent("insured_last_year"), Some(75));
        assert_eq!(target_percent("full_policy_data"), Some(30));
        assert_eq!(target_percent("phone_only"), Some(20));
        assert_eq!(target_percent("local_recent_workshop"), Some(20));
        assert_eq!(target_percent("local_not_back_2y"), Some(10));
        assert_eq!(target_percent("other_city"), None);
        assert!(is_known("other_city"));
        assert_eq!(CATEGORIES.len(), 6);
    }

    #[test]
    fn unknown_codes_have_no_target() {
        assert_eq!(target_percent("Insured_Last_Year"), None);
        assert_eq!(target_percent(""), None);
        assert!(!is_known("vip"));
    }

    #[test]
    fn codes_are_unique() {
        for (i, a) in CATEGORIES.iter().enumerate() {
            assert!(CATEGORIES[i + 1..].iter().all(|b| b.code != a.code));
        }
    }
}
