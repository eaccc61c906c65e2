//! The daemon as a ROS 2 node (docs/ros2.md): images from a `sensor_msgs/Image` or
//! `CompressedImage` topic become frames (`source.kind = "ros2"`), and captions go out on
//! `std_msgs/String` topics. It speaks DDS itself (RustDDS, through the `ros2-client` crate), so no
//! ROS installation is needed to build or run it; the `ros2` cargo feature (on by default) builds it.

#[cfg(feature = "ros2")]
mod image;
#[cfg(feature = "ros2")]
mod node;

#[cfg(feature = "ros2")]
pub use node::{Counters, Feed, spawn, validate};

/// Without the feature, a configuration that asks for ROS 2 is refused at start.
#[cfg(not(feature = "ros2"))]
pub fn validate(_: &crate::config::Ros2Config) -> Result<(), String> {
    Err("source.kind = \"ros2\" and ros2.enabled need clipcap built with the ros2 feature".into())
}
