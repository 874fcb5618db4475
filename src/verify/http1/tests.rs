use super::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

fn complete(buf: &[u8]) -> (u16, Bytes, usize, bool) {
    match parse_response(buf).unwrap() {
        Parsed::Complete {
            status,
            body,
            consumed,
            keep_alive,
            ..
        } => (status, body, consumed, keep_alive),
        Parsed::Partial => panic!("partial"),
    }
}

#[test]
fn content_length_answers() {
    let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(
        complete(a),
        (200, Bytes::from_static(b"hello"), a.len(), true)
    );
    for cut in [10, a.len() - 1] {
        assert_eq!(parse_response(&a[..cut]).unwrap(), Parsed::Partial);
    }
    let close = b"HTTP/1.1 400 Bad\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}";
    assert!(!complete(close).3);
    let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
    assert_eq!(complete(empty), (204, Bytes::new(), empty.len(), true));
    let old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    assert!(!complete(old).3, "HTTP/1.0 closes unless asked");
}

#[test]
fn announced_idle_timeouts_are_read() {
    let a = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(
        parse_response(a).unwrap(),
        Parsed::Complete { idle_timeout: Some(t), .. } if t == Duration::from_secs(5)
    ));
    let b = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(
        parse_response(b).unwrap(),
        Parsed::Complete {
            idle_timeout: None,
            ..
        }
    ));
}

#[test]
fn chunked_answers_and_interim_answers() {
    let a = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (status, body, consumed, keep) = complete(a);
    assert_eq!(
        (status, &body[..], consumed, keep),
        (200, &b"{\"a\":1}"[..], a.len(), true)
    );
    for cut in [60, a.len() - 2, a.len() - 1] {
        assert_eq!(parse_response(&a[..cut]).unwrap(), Parsed::Partial, "{cut}");
    }
    assert!(
        parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
    );
    assert!(
        parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd").is_err()
    );
}

#[test]
fn hostile_chunk_sizes_are_errors_not_panics() {
    for size in ["ffffffffffffffff", "fffffffffffffffe", "100001"] {
        let a =
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n{size}\r\nabc");
        assert!(parse_response(a.as_bytes()).is_err(), "{size}");
    }
}

#[test]
fn bad_and_oversized_answers_are_errors() {
    assert!(parse_response(b"garbage\r\n\r\n").is_err());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    let huge = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        MAX_RESPONSE_BYTES + 1
    );
    assert!(parse_response(huge.as_bytes()).is_err());
    // Close-delimited: complete only at EOF.
    let a = b"HTTP/1.1 200 OK\r\n\r\n{\"isValid\":true}";
    assert_eq!(parse_response(a).unwrap(), Parsed::Partial);
    assert_eq!(
        parse_response_at_eof(a),
        Some((200, Bytes::from_static(b"{\"isValid\":true}")))
    );
    assert_eq!(
        parse_response_at_eof(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n{}"),
        Some((200, Bytes::from_static(b"{}"))),
        "an interim answer is skipped"
    );
    assert_eq!(
        parse_response_at_eof(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}"),
        None,
        "a truncated framed answer is not an answer"
    );
}

#[test]
fn endpoint_heads() {
    let client = Http1Client::new(
        "https://x402.example.com/api/facilitator",
        Duration::from_secs(1),
    )
    .unwrap();
    let e = client.endpoint(
        "/settle",
        &[("authorization".to_owned(), "Bearer t".to_owned())],
        false,
    );
    let head = std::str::from_utf8(&e.head).unwrap();
    assert!(head.starts_with("POST /api/facilitator/settle HTTP/1.1\r\nHost: x402.example.com\r\n"));
    assert!(head.contains("\r\nauthorization: Bearer t\r\n"));
    assert!(head.ends_with("\r\nContent-Length: "));
    assert!(Http1Client::new("ftp://x", Duration::from_secs(1)).is_err());
}

/// A server that reads one request per connection step, answering with `answers` in turn, and
/// closing the connection after every answer whose flag is set. Returns the requests seen.
async fn server(
    answers: Vec<(&'static str, bool)>,
) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut answers = answers.into_iter().peekable();
        'conns: loop {
            let Ok((sock, _)) = listener.accept().await else {
                break;
            };
            let mut reader = BufReader::new(sock);
            loop {
                let mut head = String::new();
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        continue 'conns;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length: ") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).await.unwrap();
                seen.push(format!("{head}{}", String::from_utf8(body).unwrap()));
                let Some((answer, close)) = answers.next() else {
                    break 'conns;
                };
                reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
                if answers.peek().is_none() {
                    break 'conns;
                }
                if close {
                    continue 'conns;
                }
            }
        }
        seen
    });
    (url, task)
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

#[tokio::test]
async fn reuses_connections_and_replaces_closed_ones() {
    let (url, task) = server(vec![(OK, false), (OK, true), (OK, false), (OK, false)]).await;
    let client = Http1Client::new(&url, Duration::from_secs(1)).unwrap();
    let verify = client.endpoint("/verify", &[], true);
    for i in 0..4 {
        let (status, body) = client
            .post(&verify, &format!("{{\"n\":{i}}}"))
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (200, &b"{}"[..]));
        // Give the server's close time to arrive, so the pool sees it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    let seen = task.await.unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen[0].starts_with("POST /verify HTTP/1.1\r\n"));
    assert!(seen[3].ends_with("{\"n\":3}"));
}

#[tokio::test]
async fn a_lost_settle_answer_is_an_error_never_a_resend() {
    // The server reads the request and closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(Ok((mut sock, _))) =
            tokio::time::timeout(Duration::from_millis(300), listener.accept()).await
        {
            n += 1;
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
        }
        n
    });
    let client = Http1Client::new(&url, Duration::from_secs(1)).unwrap();
    let settle = client.endpoint("/settle", &[], false);
    let err = client.post(&settle, "{}").await.unwrap_err();
    assert!(!err.is_connect());
    assert_eq!(accepted.await.unwrap(), 1, "the settle was sent once");
}

#[tokio::test]
async fn refused_connections_are_connect_errors() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let client = Http1Client::new(&url, Duration::from_secs(1)).unwrap();
    let e = client
        .post(&client.endpoint("/settle", &[], false), "{}")
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e}");
}
