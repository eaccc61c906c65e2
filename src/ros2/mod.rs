//! The daemon as a ROS 2 node (docs/ros2.md): images from a `sensor_msgs/Image` or
//! `CompressedImage` topic become frames (`source.kind = "ros2"`), and captions go out on
//! `std_msgs/String` topics. It speaks DDS itself (RustDDS, through the `ros2-client` crate), so no
//! ROS installation is needed to build or run it; the `ros2` cargo feature (on by default) builds it.
//! Its settings are the `[ros2]` table, checked here.

#[cfg(feature = "ros2")]
mod image;
#[cfg(feature = "ros2")]
mod node;

use serde::Deserialize;

use crate::settings::Invalid;
#[cfg(feature = "ros2")]
pub use node::{Counters, Feed, spawn};

/// A ROS 2 subscription's reliability QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reliability {
    /// The sensor-data profile: matches best-effort and reliable publishers.
    BestEffort,
    /// Matches reliable publishers only.
    Reliable,
}

/// `[ros2]`: the daemon as a ROS 2 node (docs/ros2.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ros2Config {
    /// Join the ROS 2 graph to publish captions with any source; `source.kind = "ros2"` joins anyway.
    pub enabled: bool,
    /// The DDS domain (ROS_DOMAIN_ID), 0 to 232.
    pub domain_id: u16,
    /// The `sensor_msgs/Image` topic (`source.kind = "ros2"`).
    pub image_topic: String,
    /// Subscribe to `{image_topic}/compressed` (`sensor_msgs/CompressedImage`, JPEG or PNG) instead.
    pub compressed: bool,
    /// The image subscription's reliability.
    pub reliability: Reliability,
    /// The image subscription's history depth (keep last N).
    pub depth: u32,
    /// `std_msgs/String` topic of the caption texts; empty: not published.
    pub caption_topic: String,
    /// `std_msgs/String` topic of the caption events as JSON (as on HTTP); empty: not published.
    pub caption_json_topic: String,
}

impl Default for Ros2Config {
    fn default() -> Self {
        Ros2Config {
            enabled: false,
            domain_id: 0,
            image_topic: "/camera/image_raw".into(),
            compressed: false,
            reliability: Reliability::BestEffort,
            depth: 1,
            caption_topic: "/clipcap/caption".into(),
            caption_json_topic: "/clipcap/caption_json".into(),
        }
    }
}

/// `topic` with the source's name as a namespace before its last segment
/// (`/clipcap/caption` for `front-left`: `/clipcap/front_left/caption`), the name made a ROS name:
/// `-` becomes `_`, and one that starts with a digit gets `source_` before it.
pub fn source_topic(topic: &str, source: &str) -> String {
    let mut name = source.replace('-', "_");
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "source_");
    }
    let (parent, leaf) = topic.rsplit_once('/').unwrap_or(("", topic));
    format!("{parent}/{name}/{leaf}")
}

impl Ros2Config {
    /// The caption topics of the source named `source` when there are several: `caption_topic` and
    /// `caption_json_topic` with its name before their last segment (empty when not published).
    pub fn source_topics(&self, source: &str) -> [String; 2] {
        [&self.caption_topic, &self.caption_json_topic].map(|t| {
            if t.is_empty() {
                String::new()
            } else {
                source_topic(t, source)
            }
        })
    }

    /// Checks the caption topics of several sources: ROS 2 names, one set per source.
    #[cfg(feature = "ros2")]
    pub fn validate_sources(&self, sources: &[String]) -> Result<(), Invalid> {
        let mut seen: Vec<String> = Vec::new();
        for source in sources {
            for topic in self.source_topics(source).into_iter().filter(|t| !t.is_empty()) {
                ros2_client::Name::parse(&topic).map_err(|e| {
                    Invalid::new(
                        "sources",
                        format!("source {source:?}: {topic:?} is not a ROS 2 topic name: {e}"),
                    )
                })?;
                if seen.contains(&topic) {
                    return Err(Invalid::new(
                        "sources",
                        format!("source {source:?}: its ROS 2 topic {topic} is another source's too"),
                    ));
                }
                seen.push(topic);
            }
        }
        Ok(())
    }

    /// The topic the images come from: `image_topic`, or its `/compressed` sibling.
    pub fn image_topic(&self) -> String {
        if self.compressed {
            format!("{}/compressed", self.image_topic.trim_end_matches('/'))
        } else {
            self.image_topic.clone()
        }
    }

    /// Checks the table, for a daemon that joins the ROS 2 graph.
    #[cfg(feature = "ros2")]
    pub fn validate(&self) -> Result<(), Invalid> {
        // RTPS ports are 7400 + 250 * domain + ...: 232 is the largest domain whose ports fit in 16 bits.
        if self.domain_id > 232 {
            return Err(Invalid::new(
                "ros2.domain_id",
                format!("ros2.domain_id = {} is over 232", self.domain_id),
            ));
        }
        let topics = [
            ("ros2.image_topic", self.image_topic()),
            ("ros2.caption_topic", self.caption_topic.clone()),
            ("ros2.caption_json_topic", self.caption_json_topic.clone()),
        ];
        for (key, topic) in topics {
            if key != "ros2.image_topic" && topic.is_empty() {
                continue;
            }
            ros2_client::Name::parse(&topic)
                .map_err(|e| Invalid::new(key, format!("{key}: {topic:?} is not a ROS 2 topic name: {e}")))?;
        }
        crate::settings::check(self.depth > 0, "ros2.depth", || "ros2.depth must be >= 1".into())
    }

    /// Without the feature, a configuration that asks for ROS 2 is refused at start.
    #[cfg(not(feature = "ros2"))]
    pub fn validate(&self) -> Result<(), Invalid> {
        Err(Invalid::new(
            "ros2.enabled",
            "source.kind = \"ros2\" and ros2.enabled need clipcap built with the ros2 feature",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_caption_topics_under_a_ros_name() {
        let config = Ros2Config::default();
        assert_eq!(
            config.source_topics("front-left"),
            ["/clipcap/front_left/caption", "/clipcap/front_left/caption_json"]
        );
        assert_eq!(source_topic("/clipcap/caption", "2nd"), "/clipcap/source_2nd/caption");
        #[cfg(feature = "ros2")]
        {
            config.validate_sources(&["door".into(), "yard-2".into()]).unwrap();
            let clash = config.validate_sources(&["a-b".into(), "a_b".into()]).unwrap_err();
            assert!(clash.reason.contains("is another source's too"), "{}", clash.reason);
        }
    }
}
