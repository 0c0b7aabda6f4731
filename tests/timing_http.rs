//! Timing-sensitive HTTP checks, in their own test binary (run serially, generous tolerances
//! for a busy 2-core machine).

mod common;

use common::{send, TestServer, BOTH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_held_to_the_stream_limit_and_others_are_served() {
    let ts = TestServer::start_with(|c| c.transport.max_streams = 20).await;
    for v in BOTH {
        let (flooder, _) = ts.connect(v).await;
        let flooder = std::sync::Arc::new(flooder);
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (c, url) = (flooder.clone(), ts.url(v, "/delay-ms/100"));
            tasks.push(tokio::spawn(async move { send(&c, "GET", &url, &[], b"").await.status }));
        }
        // Another client is answered at once, while the flood is held to 20 streams at a time.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (other, _) = ts.connect(v).await;
        let t = std::time::Instant::now();
        assert_eq!(send(&other, "GET", &ts.url(v, "/status/200"), &[], b"").await.status, 200);
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "{v:?}: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 200);
        }
        // 200 requests of 100 ms, 20 at a time: about a second, not 100 ms.
        assert!(t.elapsed() >= std::time::Duration::from_millis(700), "{v:?}: flood not limited: {:?}", t.elapsed());
    }
    ts.stop().await;
}
