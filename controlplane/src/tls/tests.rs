use super::*;

/// A CA, and a server certificate for 127.0.0.1 it signed, in PEM.
pub(crate) fn ca_and_leaf(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

#[test]
fn a_changed_certificate_is_loaded_and_a_broken_one_keeps_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        client_ca: None,
    };
    let (_, cert, key) = ca_and_leaf("one");
    std::fs::write(&files.cert, &cert).unwrap();
    std::fs::write(&files.key, &key).unwrap();
    let tls = ServerTls::load(files.clone()).unwrap();
    let first = tls.config();
    assert!(
        Arc::ptr_eq(&first, &tls.config()),
        "unchanged files: the same configuration"
    );
    assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);

    // Rotated in place (write to a temporary file, rename): the next connection's.
    let (_, cert2, key2) = ca_and_leaf("two");
    let tmp = dir.path().join("tmp");
    std::fs::write(&tmp, &cert2).unwrap();
    std::fs::rename(&tmp, &files.cert).unwrap();
    std::fs::write(&tmp, &key2).unwrap();
    std::fs::rename(&tmp, &files.key).unwrap();
    let second = tls.config();
    assert!(!Arc::ptr_eq(&first, &second));

    // Half a rotation — a key that does not match — and garbage: the previous one serves.
    std::fs::write(&files.key, &key).unwrap();
    assert!(Arc::ptr_eq(&second, &tls.config()));
    std::fs::write(&files.cert, "not pem").unwrap();
    assert!(Arc::ptr_eq(&second, &tls.config()));
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca_and_leaf("one");
    let c = dir.path().join("cert.pem");
    let k = dir.path().join("key.pem");
    std::fs::write(&c, &cert).unwrap();
    std::fs::write(&k, "nothing").unwrap();
    let files = |client_ca| TlsFiles {
        cert: c.clone(),
        key: k.clone(),
        client_ca,
    };
    let e = ServerTls::load(files(None)).unwrap_err().to_string();
    assert!(e.contains("key.pem"), "{e}");
    std::fs::write(&k, &key).unwrap();
    let e = ServerTls::load(files(Some(dir.path().join("missing.pem"))))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pem"), "{e}");
    assert!(ServerTls::load(files(Some(c.clone()))).unwrap().mutual());
    // A key from another certificate.
    let (_, _, other) = ca_and_leaf("two");
    std::fs::write(&k, &other).unwrap();
    assert!(ServerTls::load(files(None)).is_err());
}
