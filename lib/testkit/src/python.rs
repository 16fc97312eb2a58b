//! Clients and servers in Python, built only from `proto/` with grpcio-tools: proof that
//! tandem's contracts serve other languages, and a user-svc flavor that really differs.
//! Needs `python3` with grpcio and grpcio-tools (scripts/test installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::PortReservation;
use crate::proc::Proc;

/// The repository's directory (where proto/ and tests/clients/ are).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Generates Python stubs for every tandem proto into `out`.
pub fn generate_stubs(out: &Path) {
    std::fs::create_dir_all(out).expect("the stub directory can be made");
    let proto = repo().join("proto");
    let mut command = Command::new("python3");
    command
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(format!("--pyi_out={}", out.display()));
    for file in [
        "tandem/common/v1/common.proto",
        "tandem/user/v1/user_service.proto",
        "tandem/order/v1/order_service.proto",
        "tandem/events/v1/user_events.proto",
    ] {
        command.arg(proto.join(file));
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run python3 ({e}): pip install grpcio-tools (scripts/test does)")
    });
    assert!(
        output.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python user-svc flavor (tests/clients/flavor.py), forwarding to a real flavor.
pub struct PythonFlavor {
    pub port: PortReservation,
    control: PathBuf,
    proc: Option<Proc>,
}

impl PythonFlavor {
    /// Starts it in `dir`, forwarding to `upstream` (host:port); waits until it answers.
    pub async fn start(dir: &Path, upstream: &str) -> PythonFlavor {
        let stubs = dir.join("py");
        generate_stubs(&stubs);
        let port = PortReservation::new();
        let control = dir.join("flavor-control.json");
        let mut command = Command::new("python3");
        command
            .arg(repo().join("tests/clients/flavor.py"))
            .arg("--stubs")
            .arg(&stubs)
            .args(["--listen", &port.addr().to_string(), "--upstream", upstream])
            .arg("--control")
            .arg(&control);
        let proc = Proc::start("python-flavor", command, Vec::new(), dir);
        let flavor = PythonFlavor {
            port,
            control,
            proc: Some(proc),
        };
        flavor.wait_ready().await;
        flavor
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}", self.port.addr());
        crate::eventually(
            Duration::from_secs(60),
            "the Python flavor to answer",
            || {
                let url = url.clone();
                async move {
                    let channel = tonic::transport::Channel::from_shared(url)
                        .ok()?
                        .connect()
                        .await
                        .ok()?;
                    let mut client =
                        tandem::proto::user::v1::user_service_client::UserServiceClient::new(
                            channel,
                        );
                    // Any answer of its own (here INVALID_ARGUMENT from the real flavor) means
                    // it serves.
                    match client
                        .get_user(tandem::proto::user::v1::GetUserRequest::default())
                        .await
                    {
                        Ok(_) => Some(()),
                        Err(status) if status.code() != tonic::Code::Unavailable => Some(()),
                        Err(_) => None,
                    }
                }
            },
        )
        .await;
    }

    /// Replaces what it does (see tests/clients/flavor.py), from its next call on (it
    /// checks the file at every call; the rename is what it sees).
    pub fn set(&self, control: serde_json::Value) {
        // Written whole and renamed, so it never reads half a file.
        let temp = self.control.with_extension("tmp");
        std::fs::write(&temp, control.to_string()).expect("the control file can be written");
        std::fs::rename(&temp, &self.control).expect("the control file can be replaced");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.port.addr())
    }

    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }
}
