//! Containing panics: a bug in code that handles one request (tract, a decoder, a check) must
//! cost that request an `internal` reply, never the thread or task that serves every request.

/// The text of a panic's payload (`panic!` with a message gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (None, Some(s)) => s.clone(),
        (None, None) => "a panic without a message".into(),
    }
}
