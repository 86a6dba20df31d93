//! An error with its causes, for the places that show errors to people: log lines, error
//! replies, the command line. Errors keep their causes as typed sources (`#[source]`) and print
//! only their own part; this joins the chain, as `anyhow`'s `{:#}` does at the binary's edge.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources: `outer: cause: root cause`.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A cause from code that reports errors as `anyhow::Error` (tract does), kept with its chain.
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("loading failed")]
    struct Outer(#[source] Cause);

    #[test]
    fn every_cause_is_shown_in_order() {
        let tract = anyhow::anyhow!("no such operator").context("translating node #3");
        let error = Outer(tract.into());
        assert_eq!(Report(&error).to_string(), "loading failed: translating node #3: no such operator");
    }
}
