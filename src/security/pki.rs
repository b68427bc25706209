//! The cluster's certificate authority and the certificates it issues
//! (rcgen, ECDSA P-256). The CA lives in the first manager's
//! `<data_dir>/pki/` (`ca.crt`, and `ca.key` readable by its owner only);
//! every node certificate names its holder (see [`Identity`]) and the
//! addresses it serves on, and is good for server and client use both: the
//! manager and the workers call each other, each side with its own
//! certificate.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use time::OffsetDateTime;

use super::SecurityError;
use super::identity::Identity;
use super::secret::sha256_hex;

/// How long the CA is good for.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start being valid a little in the past: clocks drift.
const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedCert { .. }")
    }
}

/// The cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    digest: String,
}

impl Ca {
    /// A new CA for a cluster.
    pub fn create() -> Result<Self, SecurityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Cube cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.pem(), key)
    }

    /// A CA from its certificate and key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, SecurityError> {
        let key = KeyPair::from_pem(key_pem)?;
        Self::from_parts(cert_pem.to_string(), key)
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> Result<Self, SecurityError> {
        let digest = digest_of_pem(&cert_pem)?;
        Ok(Ca {
            cert_pem,
            key,
            digest,
        })
    }

    /// The CA in `dir` (`ca.crt`, `ca.key`), made there if there is none.
    /// Also whether it was made now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), SecurityError> {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() || key.exists() {
            let ca = Self::from_pem(&read(&crt)?, &read(&key)?)?;
            return Ok((ca, false));
        }
        let ca = Self::create()?;
        write_file(&key, ca.key.serialize_pem().as_bytes(), true)?;
        write_file(&crt, ca.cert_pem.as_bytes(), false)?;
        Ok((ca, true))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM): only for managers joining the cluster.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The SHA-256 of the CA certificate (DER), hex: what join tokens pin.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, SecurityError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// A certificate with a new key for `who` (the `generation` of its
    /// name), serving on `hosts`.
    pub fn issue(
        &self,
        who: &Identity,
        generation: u64,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<KeyedCert, SecurityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert =
            node_params(who, generation, hosts, lifetime)?.signed_by(&key, &self.issuer()?)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `who` (the `generation` of its name), serving on
    /// `hosts`, for the key of a certificate signing request (PEM). Only
    /// the request's key is taken (its signature proves the requester
    /// holds it): the names are the CA's to decide.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        who: &Identity,
        generation: u64,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<String, SecurityError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SecurityError::Request(e.to_string()))?;
        csr.params = node_params(who, generation, hosts, lifetime)?;
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }
}

/// A new key and a certificate signing request for it (PEM both).
pub fn new_request(who: &Identity) -> Result<(KeyPair, String), SecurityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.name.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

fn node_params(
    who: &Identity,
    generation: u64,
    hosts: &[String],
    lifetime: Duration,
) -> Result<CertificateParams, SecurityError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.name.as_str());
    params.distinguished_name = dn;
    let mut sans = vec![SanType::URI(who.uri(generation).try_into().map_err(
        |_| SecurityError::Certificate(format!("bad node name {:?}", who.name)),
    )?)];
    for host in hosts {
        sans.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.as_str()
                    .try_into()
                    .map_err(|_| SecurityError::Certificate(format!("bad host name {host:?}")))?,
            ),
        });
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(serial()?);
    let now = OffsetDateTime::now_utc();
    // A short life gets a short backdate: its renewal, at a share of the
    // whole validity, must come before it ends.
    params.not_before = now - BACKDATE.min(lifetime / 10);
    params.not_after = now + lifetime;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A random positive serial number.
fn serial() -> Result<SerialNumber, SecurityError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| SecurityError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The SHA-256 (hex) of the first certificate in a PEM text.
pub fn digest_of_pem(pem: &str) -> Result<String, SecurityError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| SecurityError::Certificate(format!("not a PEM certificate: {e}")))?;
    Ok(sha256_hex(&der))
}

/// When a PEM certificate started being valid, and when it stops.
pub fn validity_of_pem(pem: &str) -> Result<(OffsetDateTime, OffsetDateTime), SecurityError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| SecurityError::Certificate(format!("not a PEM certificate: {e}")))?;
    validity_of_der(&der)
}

/// When a DER certificate started being valid, and when it stops.
pub fn validity_of_der(der: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), SecurityError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| SecurityError::Certificate(format!("cannot parse: {e}")))?;
    let v = cert.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// How long from `now` until a certificate valid from `from` to `until`
/// is renewed: at `fraction` of its life (Swarm renews at a random point
/// between 50% and 80%), at once when that is past.
pub fn renewal_delay(
    from: OffsetDateTime,
    until: OffsetDateTime,
    now: OffsetDateTime,
    fraction: f64,
) -> Duration {
    let life = (until - from).as_seconds_f64().max(0.0);
    let at = from + time::Duration::seconds_f64(life * fraction.clamp(0.0, 1.0));
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

/// A random point between 50% and 80% of a certificate's life.
pub fn renewal_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    let random = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map(|_| u32::from_le_bytes(bytes) as f64 / u32::MAX as f64)
        .unwrap_or(0.5);
    0.5 + 0.3 * random
}

pub fn read(path: &Path) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(|source| SecurityError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file whole (through a temporary file and a rename, so a
/// reader never sees half of it); `private` files are readable by their
/// owner only (0600).
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), SecurityError> {
    let err = |source| SecurityError::File {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_its_fraction_of_the_life_or_at_once() {
        let from = OffsetDateTime::UNIX_EPOCH;
        let until = from + time::Duration::seconds(100);
        let d =
            |now: i64, f: f64| renewal_delay(from, until, from + time::Duration::seconds(now), f);
        assert_eq!(d(0, 0.5), Duration::from_secs(50));
        assert_eq!(d(10, 0.8), Duration::from_secs(70));
        assert_eq!(d(90, 0.5), Duration::ZERO);
        for _ in 0..100 {
            let f = renewal_fraction();
            assert!((0.5..=0.8).contains(&f), "{f}");
        }
    }

    #[test]
    fn the_ca_is_kept_and_its_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (ca, made) = Ca::load_or_create(dir.path()).unwrap();
        assert!(made);
        let (again, made) = Ca::load_or_create(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(ca.digest(), again.digest());
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("ca.crt"), 0o644);
    }

    #[test]
    fn issued_certificates_name_their_holder_and_not_what_a_request_asks() {
        let ca = Ca::create().unwrap();
        let issued = ca
            .issue(
                &Identity::manager("m1"),
                0,
                &["127.0.0.1".into(), "localhost".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(Identity::of_cert(&der).unwrap(), Identity::manager("m1"));
        // A request that asks to be a manager gets what the CA decides.
        let (_key, csr) = new_request(&Identity::manager("evil")).unwrap();
        let pem = ca
            .sign_request(
                &csr,
                &Identity::worker("w1"),
                2,
                &[],
                Duration::from_secs(60),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(
            Identity::of_cert_with_generation(&der).unwrap(),
            (Identity::worker("w1"), 2)
        );
        let (from, until) = validity_of_pem(&pem).unwrap();
        let life = until - from;
        assert!(life >= time::Duration::seconds(60), "{life}");
        assert!(
            ca.sign_request(
                "junk",
                &Identity::worker("w1"),
                0,
                &[],
                Duration::from_secs(60)
            )
            .is_err()
        );
    }
}
