//! The customer categories of the dealer renewal targets (DOMAIN.md, "Customer
//! categories"), with the target renewal rate of each. The codes are the ones policies
//! carry in `category` (and the demo portfolio draws from).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Category {
    pub code: &'static str,
    pub description: &'static str,
    /// The target renewal rate, in percent.
    pub target_percent: u32,
}

pub const CATEGORIES: &[Category] = &[
    Category {
        code: "insured_last_year",
        description: "insured with us last year, full policy data",
        target_percent: 75,
    },
    Category {
        code: "phone_only",
        description: "phone number only, no policy data",
        target_percent: 30,
    },
    Category {
        code: "local_recent_workshop",
        description: "local, back at the workshop within two years",
        target_percent: 20,
    },
    Category {
        code: "local_not_back_2y",
        description: "local, not back for over two years",
        target_percent: 20,
    },
    Category {
        code: "other_city",
        description: "other city",
        target_percent: 10,
    },
];

/// The target renewal rate of a category, in percent; `None` for an unknown code.
pub fn target_percent(code: &str) -> Option<u32> {
    CATEGORIES
        .iter()
        .find(|c| c.code == code)
        .map(|c| c.target_percent)
}

pub fn is_known(code: &str) -> bool {
    target_percent(code).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_domain_table() {
        assert_eq!(target_percent("insured_last_year"), Some(75));
        assert_eq!(target_percent("phone_only"), Some(30));
        assert_eq!(target_percent("local_recent_workshop"), Some(20));
        assert_eq!(target_percent("local_not_back_2y"), Some(20));
        assert_eq!(target_percent("other_city"), Some(10));
        assert_eq!(CATEGORIES.len(), 5);
    }

    #[test]
    fn unknown_codes_have_no_target() {
        assert_eq!(target_percent("Insured_Last_Year"), None);
        assert_eq!(target_percent(""), None);
        assert!(!is_known("vip"));
        assert!(is_known("other_city"));
    }

    #[test]
    fn codes_are_unique() {
        for (i, a) in CATEGORIES.iter().enumerate() {
            assert!(CATEGORIES[i + 1..].iter().all(|b| b.code != a.code));
        }
    }
}
