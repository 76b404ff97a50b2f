//! Bounds on untrusted policy text, checked by a cheap scan before Cedar's
//! parser sees it.
//!
//! Cedar's parser and the code that turns its syntax tree into policies
//! (and prints, clones and drops them) recurse once per level of nesting,
//! with no guard: a policy with a few hundred nested parentheses, or a long
//! enough chain of operators, overflows a thread's stack and aborts the
//! whole process. The scan below runs in linear time with constant stack
//! and refuses, with the line and column, any text whose expression trees
//! could be deep:
//!
//! - at most [`MAX_POLICY_LEN`](crate::policy::MAX_POLICY_LEN) bytes;
//! - brackets (`(`, `[`, `{`) nested at most [`MAX_NESTING`] deep;
//! - at most [`MAX_OPERATORS`] operators per policy (every binary or unary
//!   operator, `.` access, `if`, `has`, `like`, `is`, `in`): a tree's depth
//!   is at most its operators plus its bracket nesting, so this bounds the
//!   depth of chains without brackets (`a || b || ...`, `!!!...x`);
//! - at most [`MAX_IFS`] `if` expressions per policy (`if .. else if ..`
//!   chains nest without brackets, and cost the most stack per level);
//! - at most [`MAX_POLICIES`] policies per file (and the broker keeps at
//!   most [`MAX_TENANT_POLICIES`] per tenant).
//!
//! Strings and `//` comments are skipped, so their contents never count.
//!
//! Measured on a 2 MiB thread (a Tokio worker's stack) in a debug build,
//! Cedar overflowed at about 160 nested brackets, 1,000 to 1,500 chained
//! `if`s, and 31 brackets around 1,000 `if`s; operator chains of 4,000
//! passed. The bounds keep the worst combination under half of that.

use crate::policy::{MAX_POLICY_LEN, PolicyProblem};

/// Deepest bracket nesting accepted.
pub const MAX_NESTING: usize = 32;

/// Most operators accepted in one policy.
pub const MAX_OPERATORS: usize = 256;

/// Most `if` expressions accepted in one policy.
pub const MAX_IFS: usize = 64;

/// Most policies accepted in one file (policy set).
pub const MAX_POLICIES: usize = 256;

/// Most policies one tenant may hold, over all its policy sets.
pub const MAX_TENANT_POLICIES: usize = 1024;

/// Where the scan is.
struct Scan<'a> {
    src: &'a str,
    depth: usize,
    operators: usize,
    ifs: usize,
    policies: usize,
}

impl Scan<'_> {
    fn refuse(&self, at: usize, message: String) -> PolicyProblem {
        let upto = &self.src[..at.min(self.src.len())];
        let line = upto.matches('\n').count() + 1;
        let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PolicyProblem {
            line,
            column,
            message,
        }
    }

    fn operator(&mut self, at: usize) -> Result<(), PolicyProblem> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(self.refuse(
                at,
                format!(
                    "this policy has more than {MAX_OPERATORS} operators; Mandate bounds how deep a policy's expressions may be: split it into several policies"
                ),
            ));
        }
        Ok(())
    }

    fn if_expression(&mut self, at: usize) -> Result<(), PolicyProblem> {
        self.ifs += 1;
        if self.ifs > MAX_IFS {
            return Err(self.refuse(
                at,
                format!(
                    "this policy has more than {MAX_IFS} `if` expressions; Mandate bounds how deep a policy's expressions may be: split it into several policies"
                ),
            ));
        }
        self.operator(at)
    }

    fn open(&mut self, at: usize) -> Result<(), PolicyProblem> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.refuse(
                at,
                format!(
                    "brackets are nested more than {MAX_NESTING} deep; Mandate bounds how deep a policy's expressions may be: flatten the condition or split the policy"
                ),
            ));
        }
        Ok(())
    }

    fn end_of_policy(&mut self, at: usize) -> Result<(), PolicyProblem> {
        self.operators = 0;
        self.ifs = 0;
        self.policies += 1;
        if self.policies > MAX_POLICIES {
            return Err(self.refuse(
                at,
                format!("a policy file holds at most {MAX_POLICIES} policies; split it"),
            ));
        }
        Ok(())
    }
}

/// Keywords that build an expression node.
const KEYWORD_OPERATORS: [&str; 4] = ["has", "like", "is", "in"];

/// Checks `src` against the bounds above without parsing it.
pub fn check_policy_text(src: &str) -> Result<(), PolicyProblem> {
    let mut scan = Scan {
        src,
        depth: 0,
        operators: 0,
        ifs: 0,
        policies: 0,
    };
    if src.len() > MAX_POLICY_LEN {
        return Err(scan.refuse(
            0,
            format!("policy file is longer than {MAX_POLICY_LEN} bytes"),
        ));
    }
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => i = skip_string(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => scan.open(i)?,
            b')' | b']' | b'}' => scan.depth = scan.depth.saturating_sub(1),
            b';' if scan.depth == 0 => scan.end_of_policy(i)?,
            b'|' | b'&' | b'=' => {
                // `||`, `&&`, `==`: one operator for the pair.
                if b.get(i + 1) == Some(&c) {
                    i += 1;
                }
                scan.operator(i)?;
            }
            b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'.' => {
                // `!=`, `<=`, `>=`: one operator for the pair.
                if b.get(i + 1) == Some(&b'=') {
                    i += 1;
                }
                scan.operator(i)?;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                match &src[start..i] {
                    "if" => scan.if_expression(start)?,
                    w if KEYWORD_OPERATORS.contains(&w) => scan.operator(start)?,
                    _ => {}
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the closing quote of the string opening at `start` (or the end).
fn skip_string(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "permit (principal, action, resource) when { ";

    fn nested(open: &str, close: &str, n: usize) -> String {
        format!("{HEAD}{}true{} }};", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn ordinary_policies_pass() {
        for src in [
            include_str!("../../../examples/policies/baseline.cedar"),
            include_str!("../../../examples/policies/approvals.cedar"),
            include_str!("../../../examples/policies/budget.cedar"),
        ] {
            check_policy_text(src).unwrap();
        }
        check_policy_text(&nested("(", ")", MAX_NESTING - 1)).unwrap();
    }

    #[test]
    fn deep_brackets_are_refused_with_where() {
        for (open, close) in [("(", ")"), ("[", "]"), ("{a: ", "}")] {
            for n in [MAX_NESTING, 200, 10_000] {
                let e = check_policy_text(&nested(open, close, n)).unwrap_err();
                assert!(e.message.contains("nested more than 32"), "{e}");
                // `when {` is the first level: the 32nd bracket opened here is one too many.
                let at = HEAD.len() + (MAX_NESTING - 1) * open.len();
                assert_eq!((e.line, e.column), (1, at + 1));
            }
        }
    }

    #[test]
    fn long_operator_chains_are_refused() {
        for piece in ["true || ", "!", "-", "1 + ", "context.a."] {
            let src = format!("{HEAD}{}true }};", piece.repeat(MAX_OPERATORS + 1));
            let e = check_policy_text(&src).unwrap_err();
            assert!(e.message.contains("operators"), "{piece}: {e}");
        }
        let ifs = "if true then 1 else ";
        check_policy_text(&format!("{HEAD}{}1 == 1 }};", ifs.repeat(MAX_IFS))).unwrap();
        let e =
            check_policy_text(&format!("{HEAD}{}1 == 1 }};", ifs.repeat(MAX_IFS + 1))).unwrap_err();
        assert!(e.message.contains("`if` expressions"), "{e}");
        // The count is per policy: many small policies are fine.
        let one = format!("{HEAD}{}true }};\n", "true || ".repeat(100));
        check_policy_text(&one.repeat(10)).unwrap();
    }

    #[test]
    fn strings_and_comments_do_not_count() {
        let src = format!(
            "// {}\n{HEAD}context.task == \"{}\\\"((\" }};",
            "(".repeat(1000),
            "[".repeat(1000)
        );
        check_policy_text(&src).unwrap();
    }

    #[test]
    fn too_many_policies_or_bytes_are_refused() {
        let one = "permit (principal, action, resource);\n";
        check_policy_text(&one.repeat(MAX_POLICIES)).unwrap();
        let e = check_policy_text(&one.repeat(MAX_POLICIES + 1)).unwrap_err();
        assert!(e.message.contains("at most 256 policies"), "{e}");
        let e = check_policy_text(&" ".repeat(MAX_POLICY_LEN + 1)).unwrap_err();
        assert!(e.message.contains("longer than"), "{e}");
    }
}
