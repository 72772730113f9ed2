//! `kv_certs DIR`: a throwaway CA and certificates for a local TLS cluster (`TLS=1
//! cluster/cluster.sh start` runs it): `DIR/rskv-ca.pem`, a node certificate `DIR/node.pem`
//! (+ `node-key.pem`, for 127.0.0.1, ::1 and localhost, serving and dialling) and a client
//! certificate `DIR/client.pem` (+ `client-key.pem`). The CA's key is not kept: to issue more,
//! make a new set. For development and tests only; a real deployment uses its own CA.

use std::path::PathBuf;
use std::process::ExitCode;

use rskv_testkit::pki::TestCa;
use rskv_testkit::pki::Validity;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: kv_certs DIR   (writes rskv-ca.pem, node.pem, node-key.pem, client.pem, client-key.pem)");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let made = std::fs::create_dir_all(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let ca = TestCa::new(&dir, "rskv")?;
            ca.issue("node", Validity::Current)?;
            ca.issue("client", Validity::Current)?;
            Ok(ca)
        });
    match made {
        Ok(ca) => {
            println!("{}", ca.ca_file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kv_certs: {}: {e:#}", dir.display());
            ExitCode::from(1)
        }
    }
}
