//! Issue 11, item 7: a caller's request id cannot forge log lines or carry terminal escapes in
//! the text log format: control characters are escaped and the id is bounded, in the log and in
//! the answer.

use std::time::{Duration, Instant};

use crate::common::*;
use lavic_server::proto::recommender_client::RecommenderClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_cannot_forge_log_lines() {
    let mut lavic = LavicProcess::start(&["--log-format", "text"], &[]).await;
    let mut rec = RecommenderClient::new(lavic.channel().await);
    let forged =
        "x\n2099-01-01T00:00:00Z ERROR lavic: FORGED \u{1b}[31mred\u{1b}[0m \u{202e}desrever";
    let mut req = request(&DEMO[..2]);
    req.request_id = forged.into();
    let answer = rec.recommend(req).await.unwrap().into_inner();
    assert!(
        !answer.request_id.chars().any(char::is_control),
        "{:?}",
        answer.request_id
    );
    assert!(
        answer.request_id.starts_with("x\\n2099-01-01"),
        "{:?}",
        answer.request_id
    );
    // A refused call logs its id too; a very long one is cut.
    let mut req = request(&DEMO[..1]);
    req.request_id = format!(
        "{}\r\n2099-01-01T00:00:00Z ERROR lavic: FORGED",
        "y".repeat(1000)
    );
    let err = rec.recommend(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Both calls' log lines arrive; none is forged, none carries an escape character.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lavic
        .log_lines()
        .iter()
        .filter(|l| l.contains("method=\"Recommend\"") || l.contains("method=Recommend"))
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no log lines for the two calls:\n{}",
            lavic.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = lavic.stop();
    let text = lines.join("\n");
    assert!(
        text.contains("x\\n2099-01-01T00:00:00Z ERROR lavic: FORGED"),
        "the escaped id is logged:\n{text}"
    );
    for line in &lines {
        assert!(
            !line.starts_with("2099") && !line.contains("FORGED") || line.contains("request_id"),
            "forged line: {line:?}"
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{202e}') && !line.contains('\r'),
            "escape in {line:?}"
        );
        assert!(
            !line.contains(&"y".repeat(129)),
            "a 1000-byte id went into the log uncut: {line:?}"
        );
    }
}
