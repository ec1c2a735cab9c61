//! The examples' error type: `main` returns `Result<(), Failure>`, so a failure exits with
//! status 1 and prints the error's `Display` text and its chain of sources (not its `Debug`
//! form, which would show `Load(MissingTensor { … })`).

use std::error::Error;
use std::fmt;

/// Any error, printed with its `Display` text and sources when `main` returns it.
pub struct Failure(Box<dyn Error>);

impl<E: Into<Box<dyn Error>>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        write!(f, "{shown}")?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            // Many messages already end with their source's text.
            if !shown.contains(&text) {
                write!(f, "\n  caused by: {text}")?;
                shown.push_str(&text);
            }
            source = s.source();
        }
        Ok(())
    }
}

/// What `main` prints after `Error: ` for a returned error: the `Display` form.
impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
