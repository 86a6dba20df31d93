//! The reply-topic check (`ReplyRules::check`, `check_topic_syntax`): whatever it lets through is
//! a topic the broker accepts in a PUBLISH, checked here by an independent reading of MQTT 5
//! (1.5.4, 4.7): UTF-8 of 1 to 65,535 bytes; no U+0000, no C0/C1 control characters, no
//! noncharacters; no wildcard; not a `$` topic; not under the daemon's base unless allowed.
//!
//! Input layout: byte 0 bit 0 chooses fixed rules (base "edgeinfer", allowed "clients/") or
//! rules read from the input (the base up to the first newline, then one allowed prefix up to the
//! next); the rest is the topic, as the client sent it (UTF-8 or not).
#![no_main]

use edgeinfer::mqtt::topics::{check_topic_syntax, ReplyRules};
use libfuzzer_sys::fuzz_target;

mod common;

fn forbidden(c: char) -> bool {
    let c = c as u32;
    c <= 0x1f || (0x7f..=0x9f).contains(&c) || (0xfdd0..=0xfdef).contains(&c) || (c & 0xfffe) == 0xfffe
}

fn valid_mqtt_topic_name(topic: &str) -> bool {
    (1..=65_535).contains(&topic.len())
        && !topic.chars().any(forbidden)
        && !topic.contains(['+', '#'])
        && !topic.starts_with('$')
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (base, allowed, topic) = if selector & 1 == 0 {
        ("edgeinfer".to_string(), vec!["clients/".to_string()], rest)
    } else {
        let mut parts = rest.splitn(3, |&b| b == b'\n');
        let (Some(base), Some(allowed), Some(topic)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(base), Ok(allowed)) = (std::str::from_utf8(base), std::str::from_utf8(allowed)) else {
            return;
        };
        (base.to_string(), vec![allowed.to_string()], topic)
    };
    // A topic arrives as bytes (reply_to from JSON is already a String; a Response Topic from
    // the MQTT library may be lossily decoded): only UTF-8 ones reach the check.
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    let rules = ReplyRules::new(&base, &allowed);
    let syntax_ok = check_topic_syntax(topic).is_ok();
    if syntax_ok {
        assert!((1..=65_535).contains(&topic.len()) && !topic.chars().any(forbidden), "syntax let {topic:?} through");
    }
    if rules.check(topic).is_ok() {
        assert!(syntax_ok, "check passed {topic:?}, which check_topic_syntax refuses");
        assert!(valid_mqtt_topic_name(topic), "reply topic {topic:?} is not a valid MQTT topic name");
        let own = format!("{base}/");
        let allowed_prefix = format!("{base}/{}", allowed[0]);
        assert!(
            !topic.starts_with(&own) || topic.starts_with(&allowed_prefix),
            "reply topic {topic:?} is under the daemon's own {own:?}"
        );
    }
});
