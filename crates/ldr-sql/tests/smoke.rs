//! The basics end to end on a real single-node cluster.
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_insert_select() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, s STRING)").await;
    let r = exec(&mut s, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL)").await;
    assert_eq!(r.command_tag(), "INSERT 0 3");
    assert_eq!(
        rows(&mut s, "SELECT id, s FROM t ORDER BY id").await,
        vec![vec!["1", "a"], vec!["2", "b"], vec!["3", "NULL"]]
    );
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM t").await,
        vec![vec!["3"]]
    );
}
