//! The node's thread: the DDS participant, the image subscription (when ROS 2 is the source) and the
//! caption publishers, driven by one single-threaded async runtime.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus::{IntCounter, IntGauge};
use ros2_client::{
    Context, ContextOptions, MessageTypeName, Name, Node, NodeName, NodeOptions, Publisher, QosProfile, Subscription,
    qos::History,
};
use tokio::sync::broadcast::{self, error::RecvError};

use super::image::{CompressedImage, Image, Refused, RosImage};
use super::{Reliability, Ros2Config};
use crate::records::Published;
use crate::shutdown::{Shutdown, Worker};
use crate::source::{self, FrameSlot, SourceStatus};
use clipcap_core::imageio::Budget;

/// Where the images go (`source.kind = "ros2"`).
pub struct Feed {
    pub slot: Arc<FrameSlot>,
    pub status: Arc<SourceStatus>,
    /// Larger images are refused (service.max_image_pixels, max_decode_mb).
    pub budget: Budget,
}

/// The node's metrics (service/metrics.rs registers them).
pub struct Counters {
    pub publishers: IntGauge,
    pub published: IntCounter,
    pub errors: IntCounter,
}

/// Joins the DDS domain and creates the subscription and the publishers now (so that a failure stops
/// the start), then runs them on the `ros2` thread until `shutdown`.
pub fn spawn(
    config: &Ros2Config,
    feed: Option<Feed>,
    sources: &[String],
    captions: broadcast::Receiver<Published>,
    counters: Counters,
    shutdown: Shutdown,
) -> anyhow::Result<Worker> {
    let context = Context::with_options(ContextOptions::new().domain_id(config.domain_id))
        .map_err(|e| anyhow::anyhow!("ROS 2: cannot join DDS domain {}: {e:?}", config.domain_id))?;
    let mut node = context
        .new_node(
            NodeName::new("/", "clipcap")?,
            NodeOptions::new().enable_rosout(false).start_parameter_services(false),
        )
        .map_err(|e| anyhow::anyhow!("ROS 2: cannot create the node: {e:?}"))?;
    let topic = config.image_topic();
    let images = match feed {
        None => None,
        Some(feed) if config.compressed => Some(Images::Compressed(subscribe(&mut node, config, &topic)?, feed)),
        Some(feed) => Some(Images::Raw(subscribe(&mut node, config, &topic)?, feed)),
    };
    let shared = Captions {
        text: publisher(&mut node, &config.caption_topic)?,
        json: publisher(&mut node, &config.caption_json_topic)?,
    };
    // With several sources, each also has caption topics of its own, under its name.
    let mut per_source = HashMap::new();
    if sources.len() > 1 {
        for source in sources {
            let [text, json] = config.source_topics(source);
            let captions = Captions {
                text: publisher(&mut node, &text)?,
                json: publisher(&mut node, &json)?,
            };
            per_source.insert(source.clone(), captions);
        }
    }
    let spinner = node
        .spinner()
        .map_err(|e| anyhow::anyhow!("ROS 2: cannot start the node: {e:?}"))?;
    tracing::info!(
        "ROS 2: node /clipcap in domain {}{}{}",
        config.domain_id,
        if images.is_some() {
            format!(", images from {topic}")
        } else {
            String::new()
        },
        match (&shared.text, &shared.json) {
            (None, None) => String::new(),
            _ => format!(
                ", captions on {} {}{}",
                config.caption_topic,
                config.caption_json_topic,
                if per_source.is_empty() {
                    ""
                } else {
                    " and each source's under its name"
                }
            ),
        }
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    Ok(Worker::spawn("ros2", move || {
        let spin = async {
            if let Err(e) = spinner.spin().await {
                tracing::error!("ROS 2: the node stopped: {e:?}");
            }
        };
        let work = async move {
            {
                let take = async {
                    match &images {
                        Some(Images::Raw(sub, feed)) => take(sub, &node, &topic, feed, &counters).await,
                        Some(Images::Compressed(sub, feed)) => take(sub, &node, &topic, feed, &counters).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.wait() => {}
                    () = take => {}
                    () = publish(captions, &shared, &per_source, &counters) => {}
                }
            }
            // The subscription and publishers go first, then the node, whose drop stops the spinner:
            // in another order RustDDS and ros2-client log errors about entities they cannot remove.
            drop(images);
            drop(node);
        };
        runtime.block_on(async { tokio::join!(spin, work) });
    })?)
}

enum Images {
    Raw(Subscription<Image>, Feed),
    Compressed(Subscription<CompressedImage>, Feed),
}

/// The subscription to `topic` (the configured image topic), with the configured QoS.
fn subscribe<M: RosImage>(node: &mut Node, config: &Ros2Config, topic: &str) -> anyhow::Result<Subscription<M>> {
    let mut qos = QosProfile::subscription_default().history(History::KeepLast {
        depth: config.depth as usize,
    });
    if config.reliability == Reliability::Reliable {
        qos = qos.reliability_reliable(ros2_client::qos::WhenFull::DEFAULT);
    }
    let (package, name) = M::TYPE;
    let dds_topic = node
        .create_topic(&Name::parse(topic)?, MessageTypeName::new(package, name), &qos)
        .map_err(|e| anyhow::anyhow!("ROS 2: topic {topic}: {e:?}"))?;
    node.create_subscription(&dds_topic, Some(qos))
        .map_err(|e| anyhow::anyhow!("ROS 2: cannot subscribe to {topic}: {e:?}"))
}

/// A `std_msgs/String` publisher on `topic` (reliable, keep last 10: ROS 2's default), none if empty.
fn publisher(node: &mut Node, topic: &str) -> anyhow::Result<Option<Publisher<String>>> {
    if topic.is_empty() {
        return Ok(None);
    }
    let qos = QosProfile::publisher_default().history(History::KeepLast { depth: 10 });
    let dds_topic = node
        .create_topic(&Name::parse(topic)?, MessageTypeName::new("std_msgs", "String"), &qos)
        .map_err(|e| anyhow::anyhow!("ROS 2: topic {topic}: {e:?}"))?;
    let publisher = node
        .create_publisher(&dds_topic, Some(qos))
        .map_err(|e| anyhow::anyhow!("ROS 2: cannot publish on {topic}: {e:?}"))?;
    Ok(Some(publisher))
}

/// Puts each image in the frame slot, and keeps the source's status: up from the first matched
/// publisher (or image), down when the last publisher goes.
async fn take<M: RosImage>(sub: &Subscription<M>, node: &Node, topic: &str, feed: &Feed, counters: &Counters) {
    let mut images = pin!(sub.async_stream());
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let up = || feed.status.is_up();
    // The node counts a subscription's publishers only once one was matched (before, it logs an
    // error for each count): until then, wait for that match instead.
    let mut matched = false;
    // Kinds of images refused (encodings): each is reported once, not for every image.
    let mut refused = HashSet::new();
    loop {
        tokio::select! {
            next = images.next() => match next {
                Some(Ok((message, _))) => {
                    if !up() {
                        feed.status.set_up();
                    }
                    match message.into_frame(feed.budget) {
                        (header, Ok(pixels)) => {
                            let dropped = feed.slot.put(pixels, source::ros2::origin(topic, header));
                            feed.status.frame(dropped);
                        }
                        (_, Err(Refused::Kind(why))) => {
                            if refused.insert(why.clone()) {
                                tracing::warn!("ROS 2 {topic}: {why}; such images are skipped");
                                feed.status.bad_frame();
                            }
                        }
                        (_, Err(Refused::Image(why))) => {
                            tracing::warn!("ROS 2 {topic}: {why}");
                            feed.status.bad_frame();
                        }
                    }
                }
                // A message that does not deserialise as the topic's type.
                Some(Err(e)) => {
                    tracing::warn!("ROS 2 {topic}: unreadable message: {e:?}");
                    feed.status.bad_frame();
                }
                None => return,
            },
            () = sub.wait_for_publisher(node), if !matched => {
                matched = true;
                tracing::info!("ROS 2: a publisher on {topic} matched");
                if !up() {
                    feed.status.set_up();
                }
            }
            _ = check.tick(), if matched => {
                let publishers = sub.get_publisher_count(node);
                counters.publishers.set(publishers as i64);
                let quiet = feed.status.since_last_frame().is_none_or(|s| s > 1.0);
                if publishers > 0 && !up() {
                    feed.status.set_up();
                } else if publishers == 0 && up() && quiet {
                    feed.status.fail(format!("no publisher on {topic} any more"));
                }
            }
        }
    }
}

/// Publishes each caption's text and event (as JSON) until the daemon's events end.
/// A set of caption publishers: the texts, and the events as JSON (either may be off).
struct Captions {
    text: Option<Publisher<String>>,
    json: Option<Publisher<String>>,
}

async fn publish(
    mut captions: broadcast::Receiver<Published>,
    shared: &Captions,
    per_source: &HashMap<String, Captions>,
    counters: &Counters,
) {
    if shared.text.is_none() && shared.json.is_none() && per_source.is_empty() {
        return std::future::pending().await;
    }
    loop {
        let event = match captions.recv().await {
            Ok(Published::Caption(event)) => event,
            Ok(Published::Comparison(_)) => continue,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!("ROS 2: {missed} caption(s) not published: the node fell behind");
                counters.errors.inc_by(missed);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let (text, json) = (
            event.caption.caption.clone(),
            serde_json::to_string(&*event).expect("caption events serialise"),
        );
        let mut messages = vec![(&shared.text, text.clone()), (&shared.json, json.clone())];
        if let Some(own) = per_source.get(&event.source) {
            messages.extend([(&own.text, text), (&own.json, json)]);
        }
        let mut sent = true;
        for (publisher, message) in messages {
            if let Some(publisher) = publisher
                && let Err(e) = publisher.async_publish(message).await
            {
                tracing::warn!("ROS 2: caption {} not published: {e:?}", event.id);
                counters.errors.inc();
                sent = false;
            }
        }
        if sent {
            counters.published.inc();
        }
    }
}
