// Command switchyard-tools-example calls a tool through a Switchyard router (or
// model server) with the generated Go stubs: it counts the request's tokens,
// asks the model to call a weather tool, sends the tool's result back for the
// answer, then streams the same call and joins its pieces.
//
//	switchyard-tools-example -target localhost:50051 -model smollm2-135m-instruct
//
// Each result is one line; texts and arguments are JSON strings. An error
// prints its gRPC status code and message to stderr and exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	switchyardv1 "switchyard.dev/switchyard/clients/go/switchyard/v1"
)

// The tool's arguments, as JSON Schema text.
const weatherParameters = `{
  "type": "object",
  "properties": {
    "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
  },
  "required": ["city", "unit"],
  "additionalProperties": false
}`

func main() {
	target := flag.String("target", "localhost:50051", "host:port of the router or a model server")
	model := flag.String("model", "smollm2-135m-instruct", "model id or alias")
	question := flag.String("question", "What's the weather like in Paris right now?", "the user's question")
	timeout := flag.Duration("timeout", 120*time.Second, "deadline for all the calls")
	flag.Parse()

	if err := run(*target, *model, *question, *timeout); err != nil {
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "error: %s: %s\n", st.Code(), st.Message())
		} else {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
		}
		os.Exit(1)
	}
}

func run(target, model, question string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	client := switchyardv1.NewLLMServiceClient(conn)

	tools := []*switchyardv1.Tool{{
		Name:        "get_weather",
		Description: "Current weather in a city",
		Parameters:  weatherParameters,
	}}
	messages := []*switchyardv1.ChatMessage{{Role: "user", Content: question}}
	required := &switchyardv1.ToolChoice{
		Choice: &switchyardv1.ToolChoice_Mode{Mode: switchyardv1.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED},
	}
	one := false
	temperature := float32(0)
	maxTokens := int32(120)
	sampling := &switchyardv1.SamplingParams{Temperature: &temperature, MaxTokens: &maxTokens}

	counted, err := client.CountTokens(ctx, &switchyardv1.CountTokensRequest{
		Model: model, Messages: messages, Tools: tools,
	})
	if err != nil {
		return err
	}
	fmt.Printf("count prompt_tokens=%d context_length=%d\n",
		counted.GetPromptTokens(), counted.GetContextLength())

	reply, err := client.Generate(ctx, &switchyardv1.GenerateRequest{
		Model: model, Messages: messages, Sampling: sampling,
		Tools: tools, ToolChoice: required, ParallelToolCalls: &one,
	})
	if err != nil {
		return err
	}
	fmt.Printf("finish %s prompt_tokens=%d\n", reply.GetFinishReason(), reply.GetUsage().GetPromptTokens())
	for _, call := range reply.GetToolCalls() {
		fmt.Printf("call %s %s\n", call.GetName(), quote(call.GetArguments()))
	}

	// The caller runs the tool and sends its result back, answering the call by its id.
	answered := append(messages, &switchyardv1.ChatMessage{Role: "assistant", ToolCalls: reply.GetToolCalls()})
	for _, call := range reply.GetToolCalls() {
		answered = append(answered, &switchyardv1.ChatMessage{
			Role: "tool", ToolCallId: call.GetId(), Content: `{"temperature": 21, "sky": "sunny"}`,
		})
	}
	none := &switchyardv1.ToolChoice{
		Choice: &switchyardv1.ToolChoice_Mode{Mode: switchyardv1.ToolChoiceMode_TOOL_CHOICE_MODE_NONE},
	}
	final, err := client.Generate(ctx, &switchyardv1.GenerateRequest{
		Model: model, Messages: answered, Sampling: sampling, Tools: tools, ToolChoice: none,
	})
	if err != nil {
		return err
	}
	fmt.Printf("answer %s finish=%s\n", quote(final.GetText()), final.GetFinishReason())

	// Streamed, a call comes in pieces: its name first, then fragments of its arguments.
	stream, err := client.StreamGenerate(ctx, &switchyardv1.StreamGenerateRequest{
		Model: model, Messages: messages, Sampling: sampling,
		Tools: tools, ToolChoice: required, ParallelToolCalls: &one,
	})
	if err != nil {
		return err
	}
	names := map[int32]string{}
	arguments := map[int32]string{}
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		for _, piece := range chunk.GetToolCalls() {
			if piece.GetName() != "" {
				names[piece.GetIndex()] = piece.GetName()
			}
			arguments[piece.GetIndex()] += piece.GetArguments()
		}
	}
	for index := int32(0); index < int32(len(names)); index++ {
		fmt.Printf("stream-call %s %s\n", names[index], quote(arguments[index]))
	}
	return nil
}

func quote(text string) string {
	encoded, _ := json.Marshal(text) // a string always encodes
	return string(encoded)
}
