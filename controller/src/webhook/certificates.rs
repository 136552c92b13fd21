//! The webhook's TLS certificate.
//!
//! From files (`--webhook-certificate-directory`, `tls.crt` and `tls.key`, as a
//! cert-manager Certificate's Secret has them): read at start and again when they change,
//! cert-manager renews them and its CA injector writes the CA into the webhook
//! configuration.
//!
//! Generated (no directory given): the controller keeps its own CA and serving certificate
//! in a Secret (`--webhook-secret`, type `kubernetes.io/tls`, `ca.crt` beside them), so
//! every replica serves the same one, and writes the CA into the
//! ValidatingWebhookConfiguration's `caBundle` (`--webhook-configuration`). A certificate
//! with less than a third of its validity left, or made for other host names, is replaced:
//! the Secret first (with the previous CA kept in `ca-previous.crt`), then the `caBundle`
//! (both CAs), then what the replicas serve, so the API server trusts the served
//! certificate at every step. Replicas race safely: the Secret is created once and replaced
//! only at the version read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use tracing::{info, warn};

/// Annotation on the Secret: when its serving certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "sluice.dev/not-after";
/// Annotation on the Secret: the host names its serving certificate is for, comma-separated.
pub const HOSTS_ANNOTATION: &str = "sluice.dev/hosts";

/// A CA and the serving certificate it signed, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The CA certificate (what the API server trusts).
    pub ca: String,
    /// A previous CA still trusted while replicas move to the new certificate.
    pub previous_ca: Option<String>,
    /// The serving certificate.
    pub certificate: String,
    /// Its private key.
    pub key: String,
    /// When the serving certificate expires.
    pub not_after: OffsetDateTime,
    /// The host names (DNS names or IP addresses) it is valid for.
    pub hosts: Vec<String>,
}

impl Bundle {
    /// The `caBundle` of the webhook configuration: the CA, and the previous one if any.
    pub fn ca_bundle(&self) -> String {
        match &self.previous_ca {
            Some(previous) if previous != &self.ca => format!("{}{previous}", self.ca),
            _ => self.ca.clone(),
        }
    }
}

/// Makes a CA and a serving certificate for `hosts`, valid from `now` for `validity`.
pub fn generate(
    hosts: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> anyhow::Result<Bundle> {
    let not_after = now + validity;
    let not_before = now - Duration::from_secs(300); // clocks a little behind still agree
    let ca_key = KeyPair::generate().context("failed to generate the webhook CA's key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice-controller webhook CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca = ca_params
        .self_signed(&ca_key)
        .context("failed to sign the webhook CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().context("failed to generate the webhook's key")?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .with_context(|| format!("failed to use {hosts:?} as the webhook's host names"))?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts
            .first()
            .map_or("sluice-controller webhook", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let certificate = params
        .signed_by(&key, &issuer)
        .context("failed to sign the webhook's certificate")?;
    Ok(Bundle {
        ca: ca.pem(),
        previous_ca: None,
        certificate: certificate.pem(),
        key: key.serialize_pem(),
        not_after,
        hosts: hosts.to_vec(),
    })
}

/// What to do with the certificate found in the Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is good: serve it.
    Keep,
    /// There is none (or it cannot be read): make one.
    Create,
    /// It expires within a third of `validity`, or is for other hosts: replace it.
    Renew,
}

/// Decides from the Secret's bundle (`None`: no Secret, or one that cannot be read).
pub fn decide(
    found: Option<&Bundle>,
    hosts: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Decision {
    let Some(found) = found else {
        return Decision::Create;
    };
    if found.hosts != hosts || found.not_after - now < validity / 3 {
        Decision::Renew
    } else {
        Decision::Keep
    }
}

/// The rustls configuration serving `certificate` with `key` (ring, as the rest of the
/// controller's TLS).
pub fn server_config(certificate: &str, key: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("failed to read the webhook's certificate (PEM)")?;
    if chain.is_empty() {
        return Err(anyhow!(
            "the webhook's certificate file holds no certificate"
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .context("failed to read the webhook's private key (PEM)")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("failed to set up TLS")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the webhook's certificate and key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The bundle a Secret holds, if it holds a complete one.
pub fn read_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
    };
    let annotations = secret.metadata.annotations.as_ref()?;
    let not_after = OffsetDateTime::parse(
        annotations.get(NOT_AFTER_ANNOTATION)?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    let hosts = annotations
        .get(HOSTS_ANNOTATION)?
        .split(',')
        .filter(|host| !host.is_empty())
        .map(str::to_string)
        .collect();
    Some(Bundle {
        ca: text("ca.crt")?,
        previous_ca: text("ca-previous.crt"),
        certificate: text("tls.crt")?,
        key: text("tls.key")?,
        not_after,
        hosts,
    })
}

/// The Secret holding `bundle`.
pub fn build_secret(namespace: &str, name: &str, bundle: &Bundle) -> Secret {
    let mut data = BTreeMap::from([
        (
            "ca.crt".to_string(),
            ByteString(bundle.ca.clone().into_bytes()),
        ),
        (
            "tls.crt".to_string(),
            ByteString(bundle.certificate.clone().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(bundle.key.clone().into_bytes()),
        ),
    ]);
    if let Some(previous) = &bundle.previous_ca {
        data.insert(
            "ca-previous.crt".to_string(),
            ByteString(previous.clone().into_bytes()),
        );
    }
    let not_after = bundle
        .not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            annotations: Some(BTreeMap::from([
                (NOT_AFTER_ANNOTATION.to_string(), not_after),
                (HOSTS_ANNOTATION.to_string(), bundle.hosts.join(",")),
            ])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "sluice-controller".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Where a generated certificate is kept and announced.
#[derive(Clone, Debug)]
pub struct GeneratedOptions {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The ValidatingWebhookConfiguration whose `caBundle` the controller writes; `None`:
    /// someone else writes it.
    pub configuration: Option<String>,
    /// The host names the certificate is for (the webhook Service's DNS names, or an IP).
    pub hosts: Vec<String>,
    /// How long a certificate is valid.
    pub validity: Duration,
}

/// The first bundle to serve: read from the Secret or made and stored there, with the
/// webhook configuration's `caBundle` written. Then [`keep_generated`] keeps it current.
pub async fn start_generated(
    client: &Client,
    options: &GeneratedOptions,
) -> anyhow::Result<(RustlsConfig, Bundle)> {
    let bundle = ensure_secret(client, options).await?;
    write_ca_bundle(client, options, &bundle).await?;
    let tls = RustlsConfig::from_config(server_config(&bundle.certificate, &bundle.key)?);
    Ok((tls, bundle))
}

/// Checks the Secret every `interval`: renews the certificate when [`decide`] says so (or
/// serves the one another replica renewed) and keeps the `caBundle` written.
pub async fn keep_generated(
    client: Client,
    options: GeneratedOptions,
    tls: RustlsConfig,
    mut served: Bundle,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let outcome = async {
            let bundle = ensure_secret(&client, &options).await?;
            write_ca_bundle(&client, &options, &bundle).await?;
            if bundle.certificate != served.certificate {
                tls.reload_from_config(server_config(&bundle.certificate, &bundle.key)?);
                info!(not_after = %bundle.not_after, "serving the webhook's renewed certificate");
                served = bundle;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = outcome {
            warn!("failed to keep the webhook's certificate current: {error:#}");
        }
    }
}

/// The Secret's bundle, created or renewed first when [`decide`] says so.
async fn ensure_secret(client: &Client, options: &GeneratedOptions) -> anyhow::Result<Bundle> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &options.namespace);
    let place = format!("{}/{}", options.namespace, options.secret);
    // Two rounds: a replica that loses a race reads what the winner wrote.
    for _ in 0..2 {
        let found = secrets
            .get_opt(&options.secret)
            .await
            .with_context(|| format!("failed to read the webhook's Secret {place}"))?;
        let bundle = found.as_ref().and_then(read_secret);
        let now = OffsetDateTime::now_utc();
        match decide(bundle.as_ref(), &options.hosts, now, options.validity) {
            Decision::Keep => return bundle.ok_or_else(|| anyhow!("unreachable: kept nothing")),
            decision => {
                let mut fresh = generate(&options.hosts, now, options.validity)?;
                fresh.previous_ca = bundle.filter(|old| old.not_after > now).map(|old| old.ca);
                let mut secret = build_secret(&options.namespace, &options.secret, &fresh);
                let written = match found {
                    None => secrets.create(&PostParams::default(), &secret).await,
                    Some(found) => {
                        // Replace only the version read: a concurrent renewal wins once.
                        keep_metadata(&found, &mut secret);
                        secrets
                            .replace(&options.secret, &PostParams::default(), &secret)
                            .await
                    }
                };
                match written {
                    Ok(_) => {
                        info!(secret = %place, ?decision, not_after = %fresh.not_after, hosts = ?fresh.hosts, "stored a new webhook certificate");
                        return Ok(fresh);
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!("failed to store the webhook's certificate in {place}")
                        });
                    }
                }
            }
        }
    }
    Err(anyhow!(
        "the webhook's Secret {place} changed under every attempt to store a certificate"
    ))
}

/// What a replacement keeps of the Secret it replaces: its version (so a concurrent
/// renewal wins once), its labels (the chart creates the Secret, with a placeholder, so
/// that `helm uninstall` deletes it: Helm's `managed-by` must stay), and its annotations
/// under ours (ours say what the certificate is).
fn keep_metadata(found: &Secret, secret: &mut Secret) {
    secret.metadata.resource_version = found.metadata.resource_version.clone();
    let mut labels = secret.metadata.labels.take().unwrap_or_default();
    labels.extend(found.metadata.labels.clone().unwrap_or_default());
    secret.metadata.labels = (!labels.is_empty()).then_some(labels);
    let mut annotations = found.metadata.annotations.clone().unwrap_or_default();
    annotations.extend(secret.metadata.annotations.take().unwrap_or_default());
    secret.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
}

/// Writes the CA into every webhook of the configuration, if it is not there already.
async fn write_ca_bundle(
    client: &Client,
    options: &GeneratedOptions,
    bundle: &Bundle,
) -> anyhow::Result<()> {
    let Some(name) = &options.configuration else {
        return Ok(());
    };
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mut configuration = configurations.get(name).await.with_context(|| {
        format!(
            "failed to read the ValidatingWebhookConfiguration {name} (--webhook-configuration): install it with the chart"
        )
    })?;
    let ca_bundle = ByteString(bundle.ca_bundle().into_bytes());
    let mut changed = false;
    for webhook in configuration.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&ca_bundle) {
            webhook.client_config.ca_bundle = Some(ca_bundle.clone());
            changed = true;
        }
    }
    if changed {
        configurations
            .replace(name, &PostParams::default(), &configuration)
            .await
            .with_context(|| {
                format!("failed to write the CA into the ValidatingWebhookConfiguration {name}")
            })?;
        info!(configuration = %name, "wrote the webhook's CA into its configuration");
    }
    Ok(())
}

/// Serves the certificate in `directory` (`tls.crt`, `tls.key`) and reloads it when the
/// files change (cert-manager renews them; the kubelet updates the mounted Secret).
pub async fn start_from_directory(directory: &Path) -> anyhow::Result<(RustlsConfig, String)> {
    let (certificate, key) = read_directory(directory)?;
    let tls = RustlsConfig::from_config(server_config(&certificate, &key)?);
    Ok((tls, certificate))
}

/// Re-reads `directory` every `interval` and serves what changed.
pub async fn keep_from_directory(
    directory: PathBuf,
    tls: RustlsConfig,
    mut served: String,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let outcome = read_directory(&directory).and_then(|(certificate, key)| {
            if certificate != served {
                tls.reload_from_config(server_config(&certificate, &key)?);
                info!(directory = %directory.display(), "serving the webhook's renewed certificate");
                served = certificate;
            }
            Ok(())
        });
        if let Err(error) = outcome {
            warn!("failed to reload the webhook's certificate: {error:#}");
        }
    }
}

fn read_directory(directory: &Path) -> anyhow::Result<(String, String)> {
    let read = |file: &str| {
        let path = directory.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "failed to read {} (--webhook-certificate-directory)",
                path.display()
            )
        })
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn hosts() -> Vec<String> {
        vec![
            "sluice-webhook.sluice.svc".to_string(),
            "127.0.0.1".to_string(),
        ]
    }

    #[test]
    fn renewal_is_decided_from_what_is_left_and_for_whom() {
        let now = OffsetDateTime::now_utc();
        let bundle = |left: Duration, hosts: Vec<String>| Bundle {
            ca: "ca".to_string(),
            previous_ca: None,
            certificate: "certificate".to_string(),
            key: "key".to_string(),
            not_after: now + left,
            hosts,
        };
        let day = Duration::from_secs(24 * 3600);
        let cases = [
            ("no Secret", None, Decision::Create),
            (
                "a new certificate",
                Some(bundle(YEAR, hosts())),
                Decision::Keep,
            ),
            (
                "half of it left",
                Some(bundle(YEAR / 2, hosts())),
                Decision::Keep,
            ),
            (
                "a day more than a third left",
                Some(bundle(YEAR / 3 + day, hosts())),
                Decision::Keep,
            ),
            (
                "a day less than a third left",
                Some(bundle(YEAR / 3 - day, hosts())),
                Decision::Renew,
            ),
            (
                "expired",
                Some(bundle(Duration::ZERO, hosts())),
                Decision::Renew,
            ),
            (
                "for other hosts",
                Some(bundle(YEAR, vec!["other.svc".to_string()])),
                Decision::Renew,
            ),
        ];
        for (name, found, expected) in cases {
            assert_eq!(
                decide(found.as_ref(), &hosts(), now, YEAR),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn a_generated_bundle_round_trips_through_its_secret_and_serves() {
        let now = OffsetDateTime::now_utc();
        let mut bundle = generate(&hosts(), now, YEAR).unwrap();
        bundle.previous_ca =
            Some("-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----\n".to_string());
        assert!(bundle.ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            bundle.ca_bundle().starts_with(&bundle.ca)
                && bundle
                    .ca_bundle()
                    .ends_with("old\n-----END CERTIFICATE-----\n")
        );
        let secret = build_secret("sluice", "sluice-webhook", &bundle);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let read = read_secret(&secret).unwrap();
        // The annotation keeps whole seconds.
        assert_eq!(
            read.not_after.unix_timestamp(),
            bundle.not_after.unix_timestamp()
        );
        assert_eq!(
            (
                read.ca,
                read.previous_ca,
                read.certificate,
                read.key,
                read.hosts
            ),
            (
                bundle.ca.clone(),
                bundle.previous_ca.clone(),
                bundle.certificate.clone(),
                bundle.key.clone(),
                bundle.hosts.clone()
            )
        );
        assert!(server_config(&bundle.certificate, &bundle.key).is_ok());
        assert!(
            server_config(
                &bundle.certificate,
                &generate(&hosts(), now, YEAR).unwrap().key
            )
            .is_err(),
            "a key of another certificate"
        );
    }

    #[test]
    fn a_secret_missing_a_part_is_not_a_bundle() {
        let bundle = generate(&hosts(), OffsetDateTime::now_utc(), YEAR).unwrap();
        let mut secret = build_secret("sluice", "sluice-webhook", &bundle);
        secret.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(read_secret(&secret), None);
        let mut secret = build_secret("sluice", "sluice-webhook", &bundle);
        secret.metadata.annotations = None;
        assert_eq!(read_secret(&secret), None);
    }

    /// The placeholder Secret the chart creates (so `helm uninstall` deletes it) is replaced
    /// with a certificate that keeps Helm's labels, and its annotations under ours.
    #[test]
    fn a_replacement_keeps_the_replaced_secrets_labels_and_annotations() {
        let bundle = generate(&hosts(), OffsetDateTime::now_utc(), YEAR).unwrap();
        let found: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "sluice-webhook-certificate",
                "resourceVersion": "41",
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": "sluice",
                    NOT_AFTER_ANNOTATION: "2000-01-01T00:00:00Z",
                },
            },
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "", "tls.key": ""},
        }))
        .unwrap();
        assert_eq!(
            read_secret(&found),
            None,
            "the chart's empty Secret is no bundle"
        );
        let mut secret = build_secret("sluice", "sluice-webhook-certificate", &bundle);
        keep_metadata(&found, &mut secret);
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("41"));
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
        let annotations = secret.metadata.annotations.clone().unwrap();
        assert_eq!(annotations["meta.helm.sh/release-name"], "sluice");
        assert_ne!(
            annotations[NOT_AFTER_ANNOTATION], "2000-01-01T00:00:00Z",
            "ours win"
        );
        assert_eq!(
            read_secret(&secret),
            Some(bundle),
            "and it reads back whole"
        );
    }
}
