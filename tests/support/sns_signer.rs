//! Amazon SNS, as far as a test can have it: SNS cannot run here, so this
//! is a test double. It holds a locally generated X.509 certificate and
//! RSA key (made with the `openssl` command line), serves the certificate
//! from a loopback HTTP server (the sender is told to accept that URL
//! prefix with `BACKORDER_SNS_CERT_URL_PREFIX`), signs messages exactly as
//! SNS documents (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA over
//! the canonical `name\nvalue\n` string), and counts visits to the
//! `SubscribeURL` it hands out.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

/// The topic the double's messages come from.
pub const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";

pub struct SnsDouble {
    pub base_url: String,
    dir: PathBuf,
    confirmations: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Served {
    cert: String,
    confirmations: Arc<AtomicUsize>,
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl SnsDouble {
    pub async fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-sns")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).expect("sns dir");
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sns.test.local",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let confirmations = Arc::new(AtomicUsize::new(0));
        let served = Served {
            cert: std::fs::read_to_string(&cert).expect("cert"),
            confirmations: confirmations.clone(),
        };
        let app = axum::Router::new()
            .route("/cert.pem", get(|State(s): State<Served>| async move { s.cert }))
            .route(
                "/confirm",
                get(|State(s): State<Served>| async move {
                    s.confirmations.fetch_add(1, Ordering::SeqCst);
                    "<ConfirmSubscriptionResponse/>"
                }),
            )
            .with_state(served);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/"),
            dir,
            confirmations,
        }
    }

    pub fn cert_url(&self) -> String {
        format!("{}cert.pem", self.base_url)
    }

    /// How often the `SubscribeURL` was visited.
    pub fn confirmations(&self) -> usize {
        self.confirmations.load(Ordering::SeqCst)
    }

    /// Base64 of the RSA signature over `text` (`version` "1" or "2").
    pub fn sign(&self, version: &str, text: &str) -> String {
        let digest = if version == "1" { "-sha1" } else { "-sha256" };
        let key = self.dir.join("key.pem");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl dgst {digest} -sign '{}' -binary | openssl base64 -A",
                key.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl dgst");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .expect("write to openssl");
        let output = child.wait_with_output().expect("openssl output");
        assert!(output.status.success());
        String::from_utf8(output.stdout).expect("base64").trim().to_string()
    }

    /// A signed `Notification` carrying `message` (the SES event JSON).
    pub fn notification(&self, message: &Value, version: &str) -> Value {
        self.notification_from(TOPIC, message, version)
    }

    /// Like [`Self::notification`], validly signed, from `topic` (SNS
    /// signs every account's topics with the same key).
    pub fn notification_from(&self, topic: &str, message: &Value, version: &str) -> Value {
        let message = message.to_string();
        let id = uuid::Uuid::new_v4().to_string();
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let text = format!(
            "Message\n{message}\nMessageId\n{id}\nTimestamp\n{timestamp}\nTopicArn\n{topic}\nType\nNotification\n"
        );
        json!({
            "Type": "Notification",
            "MessageId": id,
            "TopicArn": topic,
            "Message": message,
            "Timestamp": timestamp,
            "SignatureVersion": version,
            "Signature": self.sign(version, &text),
            "SigningCertURL": self.cert_url(),
            "UnsubscribeURL": format!("{}unsubscribe", self.base_url),
        })
    }

    /// A signed `SubscriptionConfirmation` whose `SubscribeURL` is ours.
    pub fn subscription_confirmation(&self) -> Value {
        self.subscription_confirmation_from(TOPIC)
    }

    /// Like [`Self::subscription_confirmation`], validly signed, for `topic`.
    pub fn subscription_confirmation_from(&self, topic: &str) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        let token = "2336412f37fb687f5d51e6e2425c464de257ebb3";
        let subscribe_url = format!("{}confirm?Token={token}", self.base_url);
        let message = format!("You have chosen to subscribe to the topic {topic}.");
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let text = format!(
            "Message\n{message}\nMessageId\n{id}\nSubscribeURL\n{subscribe_url}\nTimestamp\n{timestamp}\nToken\n{token}\nTopicArn\n{topic}\nType\nSubscriptionConfirmation\n"
        );
        json!({
            "Type": "SubscriptionConfirmation",
            "MessageId": id,
            "Token": token,
            "TopicArn": topic,
            "Message": message,
            "SubscribeURL": subscribe_url,
            "Timestamp": timestamp,
            "SignatureVersion": "2",
            "Signature": self.sign("2", &text),
            "SigningCertURL": self.cert_url(),
        })
    }
}

impl Drop for SnsDouble {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An SES event as SES publishes it to SNS (event publishing shape).
pub fn ses_bounce(address: &str, bounce_type: &str) -> Value {
    json!({
        "eventType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": if bounce_type == "Permanent" { "General" } else { "MailboxFull" },
            "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1"}],
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "feedbackId": uuid::Uuid::new_v4().to_string(),
        },
        "mail": {"messageId": uuid::Uuid::new_v4().to_string(), "destination": [address]},
    })
}

/// A complaint event (identity-notification shape: `notificationType`).
pub fn ses_complaint(address: &str) -> Value {
    json!({
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
            "feedbackId": uuid::Uuid::new_v4().to_string(),
        },
        "mail": {"messageId": uuid::Uuid::new_v4().to_string()},
    })
}
