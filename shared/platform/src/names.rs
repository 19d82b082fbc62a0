//! What a name or a code may look like when it comes from outside (a CSV, a request
//! body). A customer's name goes into a signed SMS and an agent's or branch's onto the
//! console, so a name is letters and the few marks names use (space, `·`, `-`, `'`),
//! never digits, links or punctuation a phishing text needs; codes are short ASCII.

/// Longest name we take, in characters.
pub const NAME_MAX: usize = 40;
/// Longest code (city, branch, agent) we take.
pub const CODE_MAX: usize = 32;

/// A person's name: 1 to 40 letters, with spaces, `·`, `-` or `'` between them.
pub fn person_name(text: &str) -> Result<(), &'static str> {
    let text = text.trim();
    let n = text.chars().count();
    if n == 0 {
        return Err("is required");
    }
    if n > NAME_MAX {
        return Err("is longer than 40 characters");
    }
    let allowed = |c: char| c.is_alphabetic() || matches!(c, ' ' | '·' | '•' | '-' | '\'');
    if !text.chars().all(allowed) {
        return Err("may hold only letters, spaces and · - '");
    }
    Ok(())
}

/// A branch's or company's name: as a person's, digits and brackets allowed.
pub fn organisation_name(text: &str) -> Result<(), &'static str> {
    let text = text.trim();
    let n = text.chars().count();
    if n == 0 || n > 60 {
        return Err("must be 1 to 60 characters");
    }
    let allowed = |c: char| {
        c.is_alphanumeric() || matches!(c, ' ' | '·' | '-' | '\'' | '(' | ')' | '（' | '）')
    };
    if !text.chars().all(allowed) {
        return Err("may hold only letters, digits, spaces and · - ' ( )");
    }
    Ok(())
}

/// A city, branch or agent code: 1 to 32 of `A-Z a-z 0-9 _ -`.
pub fn code(text: &str) -> Result<(), &'static str> {
    let text = text.trim();
    if text.is_empty() || text.len() > CODE_MAX {
        return Err("must be 1 to 32 characters");
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("may hold only A-Z, a-z, 0-9, _ and -");
    }
    Ok(())
}

/// A plate as it is printed: a province character or letter, then letters and digits
/// (`沪AD12345`, `粤B·12345`), at most 12 characters.
pub fn plate(text: &str) -> Result<(), &'static str> {
    let text = text.trim();
    let n = text.chars().count();
    if n == 0 || n > 12 {
        return Err("must be 1 to 12 characters");
    }
    if !text.chars().all(|c| c.is_alphanumeric() || c == '·') {
        return Err("may hold only letters, digits and ·");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_names_and_nothing_a_phishing_text_needs() {
        for good in [
            "王芳",
            "欧阳娜娜",
            "阿卜杜·热合曼",
            "Mary O'Brien",
            "Jean-Luc",
        ] {
            assert!(person_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "王芳 http://x.cn",
            "点击 bit.ly/abc",
            "王芳13812345678",
            "速回电:4008",
            "a\u{202e}b",
            &"长".repeat(41),
        ] {
            assert!(person_name(bad).is_err(), "{bad:?}");
        }
        assert!(organisation_name("上海一支（浦东）").is_ok());
        assert!(organisation_name("www.evil.cn").is_err());
        assert!(code("SH01-A03").is_ok());
        assert!(code("SH01 A03").is_err());
        assert!(code(&"A".repeat(33)).is_err());
        assert!(plate("沪AD12345").is_ok());
        assert!(plate("粤B·12345").is_ok());
        assert!(plate("沪A<script>").is_err());
    }
}
