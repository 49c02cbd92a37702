#!/usr/bin/env bash
# Runs inside `testenv run` (see sandbox.sh): DBQO_TESTENV and KUBECONFIG are set.
set -euo pipefail
TMPDIR_SANDBOX=$(dirname "$DBQO_TESTENV")
BIN="$CARGO_TARGET_DIR/debug/db-query-operator"
PG_PORT=$(jq -r .postgres.port "$DBQO_TESTENV")
PG_PASSWORD=$(jq -r .postgres.password "$DBQO_TESTENV")
export PGPASSWORD="$PG_PASSWORD"
psql_admin() { psql -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PG_PORT user=postgres dbname=$1" "${@:2}"; }

echo "== PostgreSQL: a users table"
psql_admin postgres -c "CREATE DATABASE sandbox"
psql_admin sandbox -f examples/configmap-per-row/schema.sql
psql_admin sandbox -c "TABLE users"

echo "== Kubernetes: the CRDs and the sample DBQR"
for crd in databasequeryresources databaseservers databases; do
  "$BIN" crd "$crd" | kubectl apply -f -
  kubectl wait --for condition=established --timeout=30s "crd/$crd.dbqo.dev"
done
kubectl create secret generic users-db \
  --from-literal=host=127.0.0.1 --from-literal=port="$PG_PORT" --from-literal=username=postgres \
  --from-literal=password="$PG_PASSWORD" --from-literal=dbname=sandbox --from-literal=sslmode=disable
kubectl apply -f examples/configmap-per-row/dbqr.yaml
kubectl get dbqr

echo "== The operator (log: $TMPDIR_SANDBOX/operator.log)"
"$BIN" run > "$TMPDIR_SANDBOX/operator.log" 2>&1 &
OPERATOR=$!
trap 'kill $OPERATOR 2>/dev/null || true' EXIT
wait_for() { for _ in $(seq 1 100); do if eval "$1" >/dev/null 2>&1; then return 0; fi; sleep 0.2; done; echo "timed out: $1"; exit 1; }
wait_for "kubectl get configmap user-alice"
kubectl wait --for condition=Ready --timeout=30s dbqr/users
kubectl get dbqr users
kubectl get configmaps -l app.kubernetes.io/managed-by=db-query-operator -L dbqo.dev/owner-name

echo "== Poll every 2s instead of 30s (a spec change restarts the DBQR's actor)"
kubectl patch dbqr users --type merge -p '{"spec":{"pollInterval":"2s"}}'
echo "== A new active user row ..."
psql_admin sandbox -c "INSERT INTO users (username, email) VALUES ('dave', 'dave@example.com')"
wait_for "kubectl get configmap user-dave"
echo "== ... becomes a ConfigMap"
kubectl get configmap user-dave -o yaml | sed -n '/^data:/,/^kind:/p'

echo "== Databases for teams: a DatabaseServer on this PostgreSQL and a Database on it"
kubectl create secret generic pg-admin \
  --from-literal=host=127.0.0.1 --from-literal=port="$PG_PORT" --from-literal=username=postgres \
  --from-literal=password="$PG_PASSWORD" --from-literal=dbname=postgres --from-literal=sslmode=disable
kubectl apply -f examples/database-for-a-team/server-and-database.yaml
wait_for "kubectl get secret orders-credentials"
wait_for "kubectl get db orders -o jsonpath='{.status.phase}' | grep -qx Ready"
kubectl get dbserver,db
echo "== ... and the team connects with its Secret"
ORDERS_URI=$(kubectl get secret orders-credentials -o jsonpath='{.data.uri}' | base64 -d)
psql -q -v ON_ERROR_STOP=1 "$ORDERS_URI" -c "CREATE TABLE orders (id int PRIMARY KEY)" -c "SELECT current_user, current_database()"

if [[ -n "${SANDBOX_KEEP:-}" ]]; then
  trap 'kill $OPERATOR 2>/dev/null || true; wait $OPERATOR 2>/dev/null; echo "sandbox stopped"; exit 0' TERM INT
  cat <<INFO
== The sandbox is up. In another terminal:
export KUBECONFIG=$KUBECONFIG
DATABASE_URL=postgresql://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/sandbox
  kubectl get dbqr,configmaps            # what the operator made
  psql "\$DATABASE_URL" -c "INSERT INTO users (username) VALUES ('erin')"
  kubectl apply -f your-dbqr.yaml        # the Secret users-db points at the database
  kubectl get db,dbserver                # the team database orders (Secret orders-credentials)
Operator log: $TMPDIR_SANDBOX/operator.log
Stop: Ctrl-C here, or: kill $$
INFO
  wait $OPERATOR
  echo "the operator exited; see $TMPDIR_SANDBOX/operator.log" >&2
  exit 1
fi

echo "== Deleting the DBQR deletes its objects (finalizer)"
kubectl delete dbqr users --timeout=30s
kubectl get configmaps -l app.kubernetes.io/managed-by=db-query-operator
