//! Issue 11, item 2: decompression bombs. A valid PNG of a few MB that declares 16384 x 10922
//! pixels (537 MB once decoded) is refused from its header, before a pixel is allocated, with
//! INVALID_ARGUMENT naming the field and the limit: in Recommend's inline items, in UpsertItems,
//! and as a failed item in `lavic catalog build`. The total decoded pixels of one request are
//! bounded too. Checked by the peak resident set (VmHWM) of the server process, not by time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use lavic_server::proto::{
    self, catalog_client::CatalogClient, recommender_client::RecommenderClient,
};

/// Peak memory the refusals may add to the server (decoding the bomb costs ~1 GB).
const HEADROOM_MB: f64 = 150.0;

fn inline(id: &str, image: Vec<u8>) -> proto::InlineItem {
    proto::InlineItem {
        id: id.into(),
        title: "Poster".into(),
        image,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_refused_from_the_header_in_recommend_and_upsert() {
    let bomb = bomb_png(16384, 10922);
    assert!(
        bomb.len() < 4 << 20,
        "the bomb is {} bytes, under max_image_bytes",
        bomb.len()
    );
    assert_eq!(
        lavic_model::anyres::image_dimensions(&bomb),
        Some((16384, 10922))
    );
    let lavic = LavicProcess::start(&["--catalog-token", "s3cret", "--max-image-bytes", "8388608"], &[]).await;
    let baseline = lavic.peak_rss_mb();
    let mut rec = RecommenderClient::new(lavic.channel().await).max_encoding_message_size(64 << 20);

    // One bomb among the inline items: refused, naming the item and the limit.
    let mut req = request(&[]);
    req.inline_items = vec![
        inline("SMALL1", image("square.jpg")),
        inline("BOMB1", bomb.clone()),
    ];
    let err = rec.recommend(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("inline_items[1].image:")
            && err.message().contains("16384x10922"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("max_image_pixels"),
        "{}",
        err.message()
    );

    // Images each within the per-image limit but over the per-request total (3 x 4096 x 4096).
    let big = bomb_png(4096, 4096);
    let mut req = request(&[]);
    req.inline_items = (0..3)
        .map(|i| inline(&format!("BIG{i}"), big.clone()))
        .collect();
    let err = rec.recommend(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("inline_items[2].image:")
            && err.message().contains("max_request_pixels"),
        "{}",
        err.message()
    );

    // UpsertItems: the same rule, naming the item.
    let mut cat = CatalogClient::new(lavic.channel().await).max_encoding_message_size(64 << 20);
    let items = vec![
        proto::NewItem {
            id: "OKITEM1".into(),
            title: "Mug".into(),
            image: image("square.jpg"),
            metadata_json: String::new(),
        },
        proto::NewItem {
            id: "BOMBITEM".into(),
            title: "Poster".into(),
            image: bomb.clone(),
            metadata_json: String::new(),
        },
    ];
    let mut r = tonic::Request::new(proto::UpsertItemsRequest { items });
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let err = cat.upsert_items(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("items[1].image:") && err.message().contains("max_image_pixels"),
        "{}",
        err.message()
    );

    // Ordinary images still work, and nothing above cost the server its memory.
    let mut req = request(&[]);
    req.inline_items = vec![
        inline("SMALL1", image("square.jpg")),
        inline("SMALL2", image("wide2.png")),
    ];
    assert!(rec.recommend(req).await.is_ok());
    let peak = lavic.peak_rss_mb();
    eprintln!("server VmHWM: {baseline:.0} MB before the bombs, {peak:.0} MB after");
    assert!(
        peak - baseline < HEADROOM_MB,
        "the server's peak memory grew from {baseline:.0} MB to {peak:.0} MB"
    );
    lavic.stop();
}

#[test]
fn catalog_build_reports_a_bomb_as_a_failed_item_without_decoding_it() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("bomb.png"), bomb_png(16384, 10922)).unwrap();
    std::fs::write(images.join("mug.jpg"), image("square.jpg")).unwrap();
    let items = tmp.path().join("items.jsonl");
    std::fs::write(
        &items,
        "{\"id\":\"B000000001\",\"title\":\"Mug\",\"image\":\"mug.jpg\"}\n{\"id\":\"B000000002\",\"title\":\"Poster\",\"image\":\"bomb.png\"}\n",
    )
    .unwrap();
    let f = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lavic"))
        .args([
            "catalog",
            "build",
            "--items",
            items.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
        ])
        .args([
            "--model",
            f.join("tiny-mistral").to_str().unwrap(),
            "--dtype",
            "f32",
            "--json",
            "--progress",
            "off",
        ])
        .args(["--out", tmp.path().join("catalog").to_str().unwrap()])
        .env("LAVIC_LOG", "error")
        .env_remove("LAVIC_DTYPE")
        .env_remove("LAVIC_DEVICE")
        .env_remove("LAVIC_VISION_ADAPTER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // VmHWM only grows: the last reading before the process exits is its peak so far.
    let (pid, mut peak_kb) = (child.id(), 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if let Some(kb) = proc_status_kb(pid, "VmHWM") {
            peak_kb = peak_kb.max(kb);
        }
        assert!(Instant::now() < deadline, "catalog build did not finish");
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["items"], 1, "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0][0], "B000000002");
    assert!(
        failed[0][1].as_str().unwrap().contains("16384x10922"),
        "{report}"
    );
    let peak_mb = peak_kb as f64 / 1024.0;
    eprintln!("catalog build VmHWM: {peak_mb:.0} MB");
    assert!(
        peak_mb < 400.0,
        "catalog build peaked at {peak_mb:.0} MB (decoding the bomb costs ~1 GB)"
    );
}
