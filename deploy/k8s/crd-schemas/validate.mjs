// Validates custom resources against their CRDs' OpenAPI schemas, as compiled into the
// @kubernetes-models packages (pinned in package.json / package-lock.json).
// Reads a JSON array of objects on stdin; writes a JSON array of
// {kind, name, error} (error: null when valid) on stdout. Used by tests/test_k8s.py.
const PACKAGES = {
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "security.istio.io": "@kubernetes-models/istio",
};

async function check(resource) {
  const [group, version] = resource.apiVersion.split("/");
  const pkg = PACKAGES[group];
  if (!pkg) return `no schema for ${resource.apiVersion}`;
  let Model;
  try {
    ({ [resource.kind]: Model } = await import(`${pkg}/${group}/${version}/${resource.kind}`));
  } catch (error) {
    return `no schema for ${resource.apiVersion} ${resource.kind}: ${error.message}`;
  }
  try {
    new Model(resource).validate();
    return null;
  } catch (error) {
    return `${error.message} ${JSON.stringify(error.errors ?? [])}`;
  }
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const resource of JSON.parse(input)) {
  results.push({ kind: resource.kind, name: resource.metadata?.name, error: await check(resource) });
}
process.stdout.write(JSON.stringify(results));
