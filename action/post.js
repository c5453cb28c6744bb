// The action's post entry point, run at the end of the job (also after a
// failure): GitHub runs JavaScript actions (the only kind with a post
// step); the work is post.sh's, so it is tested and read as shell. Exits
// with the script's status.
const { spawnSync } = require("child_process");
const path = require("path");

const result = spawnSync("bash", [path.join(__dirname, "post.sh")], { stdio: "inherit" });
if (result.error) {
  console.log(`::error title=fwd::cannot run bash: ${result.error.message}`);
  process.exit(1);
}
process.exit(result.status === null ? 1 : result.status);
