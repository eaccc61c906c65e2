//! Load generator for docs/fleet.md: N simulated devices, each its own MQTT 5 client (rumqttc, as the
//! daemon's publisher), publish a caption record of the daemon's size at the daemon's default
//! cadence (captioning.interval_ms, 1 s) with QoS 1 to `{prefix}/{device}/captions`; one subscriber
//! on `{prefix}/+/captions` measures publish-to-receive latency. The devices connect first, then
//! publish for `--seconds`. Prints one JSON line: devices connected and how long that took, messages
//! sent and received, the rate, latency percentiles, connections lost.
//!
//!     cargo run --release --example mqtt_load -- --port 1883 --devices 1000 --seconds 30
//!
//! scripts/mqtt_load.sh starts a mosquitto on loopback and runs it for growing N.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[arg(long)]
    devices: usize,
    /// Milliseconds between two records of a device.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// How long the devices publish.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Bytes of a record (a caption event of the demo bundle is about 600).
    #[arg(long, default_value_t = 600)]
    payload_bytes: usize,
    #[arg(long, default_value = "load")]
    prefix: String,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// A record: the send time first (`{"sent_us":...,`), padded to `bytes` with a caption-like field.
fn record(id: u64, bytes: usize) -> String {
    let head = format!(
        "{{\"sent_us\":{},\"event\":\"caption\",\"id\":{id},\"caption\":\"",
        now_us()
    );
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "a".repeat(pad))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let latencies_ms = Arc::new(Mutex::new(Vec::<f64>::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));

    // The subscriber, subscribed before any device publishes.
    let mut options = MqttOptions::new("load-subscriber", &args.host, args.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (subscriber, mut events) = AsyncClient::new(options, 64);
    subscriber
        .subscribe(format!("{}/+/captions", args.prefix), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("subscriber: {e}"),
        }
    }
    let received = latencies_ms.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let text = std::str::from_utf8(&p.payload).unwrap_or_default();
                let sent_us: Option<u64> = text
                    .strip_prefix("{\"sent_us\":")
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.parse().ok());
                if let Some(sent_us) = sent_us {
                    let ms = now_us().saturating_sub(sent_us) as f64 / 1e3;
                    received.lock().unwrap().push(ms);
                }
            }
        }
    });

    // The devices, connected first; then they publish, their first records spread over one interval.
    let interval = Duration::from_millis(args.interval_ms);
    let (go, ready) = tokio::sync::watch::channel(None::<Instant>);
    for d in 0..args.devices {
        let mut options = MqttOptions::new(format!("load-{d}"), &args.host, args.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(true)
            .set_outgoing_inflight_upper_limit(24); // as the daemon's publisher
        let (client, mut events) = AsyncClient::new(options, 16);
        let (failures, connected) = (failures.clone(), connected.clone());
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::ConnAck(_)) = event {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            failures.fetch_add(1, Ordering::Relaxed);
        });
        let (sent, topic, bytes) = (
            sent.clone(),
            format!("{}/{d}/captions", args.prefix),
            args.payload_bytes,
        );
        let offset = interval.mul_f64(d as f64 / args.devices as f64);
        let mut ready = ready.clone();
        tokio::spawn(async move {
            let Ok(stop_at) = ready.wait_for(Option::is_some).await.map(|v| v.expect("set")) else {
                return;
            };
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(interval);
            let mut id = 0;
            while Instant::now() < stop_at {
                tick.tick().await;
                id += 1;
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, record(id, bytes))
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let connecting = Instant::now();
    while connected.load(Ordering::Relaxed) < args.devices as u64 && connecting.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    let started = Instant::now();
    let stop_at = started + interval + Duration::from_secs(args.seconds);
    go.send_replace(Some(stop_at));
    tokio::time::sleep_until(stop_at.into()).await;
    let publishing = started.elapsed().as_secs_f64();
    // What is in flight arrives within a few seconds, or is late.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut ms = latencies_ms.lock().unwrap().clone();
    ms.sort_by(f64::total_cmp);
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "devices": args.devices,
            "connected": connected.load(Ordering::Relaxed),
            "connect_s": connect_s,
            "interval_ms": args.interval_ms,
            "payload_bytes": args.payload_bytes,
            "sent": sent,
            "received": ms.len(),
            "received_per_s": ms.len() as f64 / publishing,
            "latency_ms": {"p50": percentile(&ms, 0.5), "p99": percentile(&ms, 0.99), "max": percentile(&ms, 1.0)},
            "connections_lost": failures.load(Ordering::Relaxed),
        })
    );
}
