//! Kubernetes' rules for names (RFC 1123 labels and subdomains), for the
//! names of rendered objects and of what a spec names.

fn label_chars_problem(s: &str) -> Option<&'static str> {
    if !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Some("only lower-case letters, digits and '-' are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must start and end with a letter or digit");
    }
    None
}

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 63 {
        return Some("must be 1 to 63 characters");
    }
    label_chars_problem(s)
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be 1 to 253 characters");
    }
    s.split('.').find_map(|part| {
        if part.is_empty() {
            Some("must not have empty parts between dots")
        } else {
            label_chars_problem(part)
        }
    })
}
