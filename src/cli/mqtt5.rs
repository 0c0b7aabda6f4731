//! The MQTT 5 side of `quiclab mqtt pub|sub`: `--protocol 5`, and the properties given with `-D`, in
//! mosquitto_pub's syntax (`-D COMMAND PROPERTY VALUE [VALUE]`, e.g. `-D publish user-property
//! k v`, `-D connect session-expiry-interval 60`), checked against the packet they go in.

use bytes::Bytes;
use quiclab::mqtt::codec::{
    ConnectProperties, MessageProps, PublishProps, SubscribeProperties, TopicName, UserProperty, VarByteInt, Version,
};
use quiclab::mqtt::Message;

/// `--protocol`: `3`, `311`, `3.1.1`, `mqttv311` for 3.1.1; `5`, `5.0`, `mqttv5` for MQTT 5.
pub(crate) fn parse_version(s: &str) -> Result<Version, String> {
    match s {
        "3" | "4" | "311" | "3.1.1" | "mqttv311" => Ok(Version::V3),
        "5" | "5.0" | "mqttv5" => Ok(Version::V5),
        other => Err(format!("{other:?}: say 3 (MQTT 3.1.1) or 5 (MQTT 5.0)")),
    }
}

/// The properties the `-D` flags (and the named flags) give, by the packet they go in.
#[derive(Debug, Default, Clone)]
pub(crate) struct V5Props {
    pub connect: ConnectProperties,
    pub publish: PublishProps,
    pub message: MessageProps,
    pub subscribe: SubscribeProperties,
}

impl V5Props {
    /// Parse every `-D COMMAND PROPERTY VALUE [VALUE]`, given as one list of words (clap
    /// keeps the values of repeated flags in one list): a `user-property` takes two values,
    /// every other property one.
    pub(crate) fn parse(words: &[String]) -> Result<V5Props, String> {
        let mut p = V5Props::default();
        let mut rest = words;
        while !rest.is_empty() {
            let n = if rest.get(1).is_some_and(|w| w == "user-property") { 4 } else { 3 };
            let Some(item) = rest.get(..n) else {
                return Err(format!("-D {}: want COMMAND PROPERTY VALUE", rest.join(" ")));
            };
            p.set(&item[0], &item[1], &item[2..]).map_err(|e| format!("-D {}: {e}", item.join(" ")))?;
            rest = &rest[n..];
        }
        Ok(p)
    }

    fn set(&mut self, cmd: &str, name: &str, values: &[String]) -> Result<(), String> {
        let one = || match values {
            [v] => Ok(v.as_str()),
            _ => Err("takes one value".to_string()),
        };
        let num = |what: &str| -> Result<u32, String> {
            one()?.parse::<u32>().map_err(|_| format!("{what} is a number (0 to 4294967295)"))
        };
        let num16 = |what: &str| -> Result<u16, String> {
            one()?.parse::<u16>().map_err(|_| format!("{what} is a number (0 to 65535)"))
        };
        let user = || match values {
            [k, v] => Ok(UserProperty { name: k.as_str().into(), value: v.as_str().into() }),
            _ => Err("user-property takes a name and a value".to_string()),
        };
        match (cmd, name) {
            ("connect", "session-expiry-interval") => self.connect.session_expiry_interval = Some(num(name)?),
            ("connect", "receive-maximum") => self.connect.receive_max = Some(non_zero(num16(name)?)?),
            ("connect", "maximum-packet-size") => self.connect.max_packet_size = Some(non_zero(num(name)?)?),
            ("connect", "topic-alias-maximum") => self.connect.topic_alias_max = Some(num16(name)?),
            ("connect", "request-problem-information") => self.connect.request_problem_info = Some(flag(one()?)?),
            ("connect", "request-response-information") => self.connect.request_response_info = Some(flag(one()?)?),
            ("connect", "user-property") => self.connect.user_properties.push(user()?),
            ("publish", "message-expiry-interval") => self.publish.message_expiry = Some(num(name)?),
            ("publish", "topic-alias") => self.publish.topic_alias = Some(non_zero(num16(name)?)?),
            ("publish", "payload-format-indicator") => self.message.payload_utf8 = Some(flag(one()?)?),
            ("publish", "content-type") => self.message.content_type = Some(one()?.into()),
            ("publish", "response-topic") => self.message.response_topic = Some(topic(one()?)?),
            ("publish", "correlation-data") => self.message.correlation_data = Some(Bytes::from(one()?.to_owned())),
            ("publish", "user-property") => self.message.user_properties.push(user()?),
            ("subscribe", "subscription-identifier") => {
                let id = num(name)?;
                let id = VarByteInt::try_from(non_zero(id)?).map_err(|_| "at most 268435455".to_string())?;
                self.subscribe.subscription_id = Some(id);
            }
            ("subscribe", "user-property") => self.subscribe.user_properties.push(user()?),
            ("connect" | "publish" | "subscribe", other) => {
                return Err(format!("{other:?} is not a {cmd} property this command sends"))
            }
            (other, _) => return Err(format!("{other:?}: the command is connect, publish or subscribe")),
        }
        Ok(())
    }

    /// Whether any property was given.
    pub(crate) fn any(&self) -> bool {
        self.connect != ConnectProperties::default()
            || self.publish != PublishProps::default()
            || self.message != MessageProps::default()
            || self.subscribe != SubscribeProperties::default()
    }

    /// The PUBLISH properties (`None`: none).
    pub(crate) fn publish_props(&self) -> Option<Box<PublishProps>> {
        let mut p = self.publish.clone();
        p.message = self.message.clone().shared();
        (p != PublishProps::default()).then(|| Box::new(p))
    }
}

fn non_zero<T: PartialEq + Default + Copy>(v: T) -> Result<T, String> {
    if v == T::default() {
        Err("0 is not allowed (MQTT 5 §3.1.2.11)".into())
    } else {
        Ok(v)
    }
}

fn flag(v: &str) -> Result<bool, String> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err("0 or 1".into()),
    }
}

fn topic(t: &str) -> Result<TopicName, String> {
    TopicName::try_from(t).ok().filter(|t| !t.is_empty()).ok_or_else(|| format!("{t:?} is not a topic name"))
}

/// The MQTT 5 properties of a received message, as `name=value` columns (empty without).
pub(crate) fn describe(m: &Message) -> String {
    let Some(p) = m.props.as_deref() else { return String::new() };
    let mut cols: Vec<String> = Vec::new();
    if let Some(u) = p.payload_utf8 {
        cols.push(format!("payload-format={}", u8::from(u)));
    }
    if let Some(c) = &p.content_type {
        cols.push(format!("content-type={c}"));
    }
    if let Some(t) = &p.response_topic {
        cols.push(format!("response-topic={}", &**t));
    }
    if let Some(d) = &p.correlation_data {
        cols.push(format!("correlation-data={}", String::from_utf8_lossy(d)));
    }
    for u in &p.user_properties {
        cols.push(format!("user-property={}:{}", u.name, u.value));
    }
    cols.join("\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn mosquitto_style_properties() {
        let p = V5Props::parse(&d(
            "connect session-expiry-interval 60 publish user-property k v publish response-topic reply/here \
             subscribe subscription-identifier 7",
        ))
        .unwrap();
        assert_eq!(p.connect.session_expiry_interval, Some(60));
        assert_eq!(p.message.user_properties[0].name.as_ref(), "k");
        assert_eq!(p.subscribe.subscription_id.map(|v| v.value()), Some(7));
        assert!(p.publish_props().is_some());
        for bad in [
            "connect receive-maximum 0",
            "publish topic-alias 0",
            "publish response-topic a/#",
            "publish session-expiry-interval 5",
            "will content-type x",
            "publish user-property k",
            "subscribe subscription-identifier 0",
        ] {
            assert!(V5Props::parse(&d(bad)).is_err(), "{bad}");
        }
        assert_eq!(parse_version("mqttv5"), Ok(Version::V5));
        assert!(parse_version("6").is_err());
    }
}
